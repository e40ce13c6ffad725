//! `/v1/attachments`: upload raw bytes, download with auth. Which files a
//! channel accepts is checked when a message is sent; what an anonymous
//! webchat customer may upload at all (`webchat_upload_types`) is checked
//! here, before the body is read.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::attachments::{content_disposition, sanitize_filename, Quota, Uploader};
use crate::channel::provider::verify_link;
use crate::error::ApiError;
use crate::http::{authenticate, client_ip, Principal, State};
use crate::journal::record::{self, RecordRef};
use crate::protocol::AttachmentMeta;

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    pub filename: Option<String>,
}

/// The type a webchat customer's upload is stored with: the declared one,
/// without parameters, lower case, if `allowed` (exact types or `family/*`)
/// takes it; else `attachment_not_supported` naming what is taken.
fn customer_content_type(declared: &str, allowed: &[String]) -> Result<String, ApiError> {
    let essence = declared
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let taken = allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        match a.strip_suffix("/*") {
            Some(family) => essence
                .strip_prefix(family)
                .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
            None => essence == a,
        }
    });
    if taken {
        Ok(essence)
    } else {
        Err(ApiError::AttachmentNotSupported(format!(
            "{declared:?} is not a file type customers may upload; allowed: {}",
            allowed.join(", ")
        )))
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::AttachmentTooLarge(format!("files are limited to {limit} bytes"))
}

pub async fn upload(
    req: HttpRequest,
    state: State,
    query: web::Query<UploadQuery>,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&req, &state)?;
    let limit = state.config.max_upload;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let content_type = match &who {
        Principal::Customer(_) => {
            customer_content_type(&content_type, &state.config.webchat_upload_types)?
        }
        _ => content_type,
    };
    // Anonymous customers are held to a rate per address and a quota per
    // session, checked before the body is read (the quota again when the
    // file is stored, with its real size).
    let quota = match &who {
        Principal::Customer(session) => {
            let ip = client_ip(&req, &state);
            state.limits.upload(ip)?;
            let quota = Quota {
                session: session.clone(),
                ip,
            };
            state
                .attachments
                .check_quota(&quota, declared.unwrap_or(0))?;
            Some(quota)
        }
        _ => None,
    };
    // Grown as the data arrives, never sized by what the client declares.
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(ApiError::body)?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.is_empty() {
        return Err(ApiError::BadRequest("the upload is empty".into()));
    }
    let id = crate::ids::attachment_id();
    let meta = AttachmentMeta {
        url: format!("/v1/attachments/{id}"),
        id,
        content_type,
        size: bytes.len() as u64,
        filename: sanitize_filename(query.filename.as_deref()),
        error: None,
    };
    let uploader = match who {
        Principal::Customer(session) => Uploader::Customer(session),
        Principal::Agent(agent) => Uploader::Agent(agent),
        Principal::Admin => Uploader::Admin,
    };
    let bytes = bytes.freeze();
    state.attachments.persist(&meta.id, &bytes).await?;
    record::write(
        state.journal.as_ref(),
        RecordRef::AttachmentStored {
            meta: &meta,
            uploader: &uploader,
            quota: quota.as_ref(),
            at: std::time::SystemTime::now(),
        },
    );
    state
        .attachments
        .insert_persisted(meta.clone(), bytes, uploader, quota)?;
    Ok(HttpResponse::Created().json(meta))
}

/// A signed link handed to a provider (`?expires=…&signature=…`).
#[derive(Debug, Deserialize)]
pub struct SignedLink {
    pub expires: Option<u64>,
    pub signature: Option<String>,
}

/// Admin, any agent, a customer the file was sent to or who uploaded it, or
/// anyone with a valid signed link.
pub async fn download(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
    link: web::Query<SignedLink>,
) -> Result<HttpResponse, ApiError> {
    let signed = match (link.expires, link.signature.as_deref()) {
        (Some(expires), Some(signature)) => {
            if !verify_link(&state.link_key, &id, expires, signature) {
                return Err(ApiError::BadSignature(
                    "the link's signature is wrong or it has expired".into(),
                ));
            }
            true
        }
        (None, None) => false,
        _ => {
            return Err(ApiError::BadSignature(
                "a signed link needs both expires and signature".into(),
            ))
        }
    };
    let who = if signed {
        Principal::Admin
    } else {
        authenticate(&req, &state)?
    };
    let file = state
        .attachments
        .get(&id)
        .ok_or_else(|| ApiError::NotFound(format!("attachment {id} does not exist")))?;
    if let Principal::Customer(session) = &who {
        if !file.readable_by(session) {
            return Err(ApiError::NotFound(format!(
                "attachment {id} does not exist"
            )));
        }
    }
    // Always a download, never rendered as a page of this origin: the type
    // is the uploader's word, so browsers must not sniff another one, and
    // whatever is opened anyway runs sandboxed with nothing allowed.
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, file.meta.content_type.clone()))
        .insert_header((
            header::CONTENT_DISPOSITION,
            content_disposition(&file.meta.filename),
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        ))
        .body(file.bytes.clone()))
}

#[cfg(test)]
mod tests {
    use super::customer_content_type;

    #[test]
    fn customers_upload_only_allowed_types() {
        let allowed: Vec<String> = ["image/*", "application/pdf"].map(String::from).to_vec();
        assert_eq!(
            customer_content_type("Image/PNG; x=1", &allowed).as_deref(),
            Ok("image/png")
        );
        assert_eq!(
            customer_content_type("application/pdf", &allowed).as_deref(),
            Ok("application/pdf")
        );
        for refused in [
            "text/html",
            "image/",
            "imagex/png",
            "application/x-msdownload",
            "",
        ] {
            let e = customer_content_type(refused, &allowed).unwrap_err();
            assert_eq!(e.code(), "attachment_not_supported", "{refused}");
        }
        let svg = customer_content_type("image/svg+xml", &["image/png".into()]).unwrap_err();
        assert!(svg.to_string().contains("allowed: image/png"), "{svg}");
    }
}
