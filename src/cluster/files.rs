//! Uploaded files in NATS: the JetStream object store bucket
//! `<prefix>-files`, one object per stored attachment, named by its id.
//!
//! In cluster mode the active node puts a file's bytes here (after writing
//! them to its own `<data_dir>/files/<id>`) before the journal record that
//! stores the file is written, and deletes the object when the file leaves
//! the store; both through the attachment store's hook
//! ([`crate::attachments::FileReplica`], implemented here). A standby's
//! follower ([`super::standby`]) fetches each file a replicated
//! `AttachmentStored` record names and writes it to its own
//! `<data_dir>/files/<id>`, so a promoted node serves it.
//!
//! The bucket has the cluster's replicas, file storage, and no age limit.

use std::time::Duration;

use async_nats::jetstream::object_store::{
    self, DeleteErrorKind, GetErrorKind, InfoErrorKind, ObjectStore,
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::io::AsyncReadExt;

use super::{Cluster, ClusterError};

/// How long one put, get or delete may take: files are up to a few MiB, so
/// far longer than a lease call, but bounded so a NATS outage fails an
/// upload (`unavailable`) instead of hanging it.
pub const FILE_CALL_LIMIT: Duration = Duration::from_secs(30);

/// How long a read of a file may go without a chunk before the bucket is
/// asked whether the file was deleted meanwhile.
const STALLED_READ: Duration = Duration::from_secs(2);

/// A call on the files bucket failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("file {id}: {what}: {source}")]
    Nats {
        id: String,
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("file {id}: {what} timed out after {limit:?}")]
    TimedOut {
        id: String,
        what: &'static str,
        limit: Duration,
    },
}

/// The files bucket (or another object store bucket used the same way:
/// [`super::snapshots`]). Cheap to clone.
#[derive(Clone)]
pub struct Files {
    store: ObjectStore,
    bucket: String,
    /// How long one call may take.
    limit: Duration,
}

impl Files {
    /// Open the bucket `<prefix>-files`, creating it if missing (two nodes
    /// creating it at once both succeed: the server accepts an identical
    /// configuration).
    pub async fn open(cluster: &Cluster) -> Result<Files, ClusterError> {
        let bucket = format!("{}-files", cluster.settings().prefix);
        Files::open_bucket(
            cluster,
            bucket,
            "Switchboard uploaded files",
            FILE_CALL_LIMIT,
        )
        .await
    }

    /// Open (or create) object store `bucket`, each call bounded by `limit`.
    pub(super) async fn open_bucket(
        cluster: &Cluster,
        bucket: String,
        description: &str,
        limit: Duration,
    ) -> Result<Files, ClusterError> {
        let settings = cluster.settings();
        let js = cluster.jetstream();
        let err = |source: async_nats::Error| ClusterError::Bucket {
            bucket: bucket.clone(),
            source,
        };
        let store = match js.get_object_store(&bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.clone(),
                    description: Some(description.to_owned()),
                    storage: async_nats::jetstream::stream::StorageType::File,
                    num_replicas: settings.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| err(e.into()))?,
        };
        Ok(Files {
            store,
            bucket,
            limit,
        })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Store `bytes` as file `id` (replacing one of that id).
    pub async fn put(&self, id: &str, bytes: &[u8]) -> Result<(), FilesError> {
        let mut reader = bytes;
        bounded(id, "put", self.limit, self.store.put(id, &mut reader))
            .await
            .map(drop)
    }

    /// File `id`'s bytes; `None` if there is no such file (never stored, or
    /// deleted, also while it was being read).
    pub async fn get(&self, id: &str) -> Result<Option<Bytes>, FilesError> {
        let read = async {
            let mut object = match self.store.get(id).await {
                Ok(object) => object,
                Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(async_nats::Error::from(e)),
            };
            let mut bytes = Vec::with_capacity(object.info().size);
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                // A file deleted while it is read stops delivering chunks
                // without an error: a read that stalls asks whether it is
                // still there.
                match tokio::time::timeout(STALLED_READ, object.read(&mut chunk)).await {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => match self.store.info(id).await {
                        Ok(info) if !info.deleted => {}
                        Ok(_) => return Ok(None),
                        Err(e) if e.kind() == InfoErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(e.into()),
                    },
                }
            }
            Ok(Some(Bytes::from(bytes)))
        };
        bounded(id, "get", self.limit, read).await
    }

    /// The names of the objects in the bucket (deleted ones left out).
    pub async fn names(&self) -> Result<Vec<String>, FilesError> {
        use futures_util::TryStreamExt;
        let list = async {
            let list = self.store.list().await?;
            let infos: Vec<object_store::ObjectInfo> = list.try_collect().await?;
            Ok::<_, async_nats::Error>(infos.into_iter().map(|i| i.name).collect())
        };
        bounded(&self.bucket, "list", self.limit, list).await
    }

    /// Delete file `id`; deleting one that is not there is no error.
    pub async fn delete(&self, id: &str) -> Result<(), FilesError> {
        let delete = async {
            match self.store.delete(id).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == DeleteErrorKind::NotFound => Ok(()),
                Err(e) => Err(async_nats::Error::from(e)),
            }
        };
        bounded(id, "delete", self.limit, delete).await
    }
}

/// Run one call on the bucket within `limit`.
async fn bounded<T, E: Into<async_nats::Error>>(
    id: &str,
    what: &'static str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, FilesError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(FilesError::Nats {
            id: id.to_owned(),
            what,
            source: e.into(),
        }),
        Err(_) => Err(FilesError::TimedOut {
            id: id.to_owned(),
            what,
            limit,
        }),
    }
}

impl crate::attachments::FileReplica for Files {
    fn put(&self, id: &str, bytes: Bytes) -> BoxFuture<'static, Result<(), String>> {
        let (files, id) = (self.clone(), id.to_owned());
        Box::pin(async move {
            Files::put(&files, &id, &bytes)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn delete(&self, id: &str) -> BoxFuture<'static, Result<(), String>> {
        let (files, id) = (self.clone(), id.to_owned());
        Box::pin(async move { Files::delete(&files, &id).await.map_err(|e| e.to_string()) })
    }
}
