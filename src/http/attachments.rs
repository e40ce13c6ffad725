//! `/v1/attachments`: upload raw bytes, download with auth. Which files a
//! channel accepts is checked when a message is sent, not here.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::attachments::Uploader;
use crate::channel::provider::verify_link;
use crate::error::ApiError;
use crate::http::{authenticate, client_ip, Principal, State};
use crate::protocol::AttachmentMeta;

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    pub filename: Option<String>,
}

fn clean_filename(name: Option<&str>) -> String {
    let name = name.unwrap_or("file");
    // Keep the last path component, drop control characters, cap the length.
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(255).collect();
    if cleaned.trim().is_empty() {
        "file".into()
    } else {
        cleaned
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
    // Anonymous customers are held to a rate per address and a quota per
    // session, checked before the body is read (the quota again when the
    // file is stored, with its real size).
    let uploader = match who {
        Principal::Customer(session) => {
            let ip = client_ip(&req, &state);
            state.limits.upload(ip)?;
            let uploader = Uploader { session, ip };
            state
                .attachments
                .check_quota(&uploader, declared.unwrap_or(0))?;
            Some(uploader)
        }
        _ => None,
    };
    let mut bytes = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
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
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let id = crate::ids::attachment_id();
    let meta = AttachmentMeta {
        url: format!("/v1/attachments/{id}"),
        id,
        content_type,
        size: bytes.len() as u64,
        filename: clean_filename(query.filename.as_deref()),
        error: None,
    };
    state
        .attachments
        .insert(meta.clone(), bytes.freeze(), uploader)?;
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
    let disposition = format!(
        "attachment; filename=\"{}\"",
        file.meta.filename.replace(['"', '\\'], "_")
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, file.meta.content_type.clone()))
        .insert_header((header::CONTENT_DISPOSITION, disposition))
        .body(file.bytes.clone()))
}

#[cfg(test)]
mod tests {
    use super::clean_filename;

    #[test]
    fn filenames_are_cleaned() {
        assert_eq!(clean_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_filename(Some("a\\b\\c.pdf")), "c.pdf");
        assert_eq!(clean_filename(None), "file");
        assert_eq!(clean_filename(Some("\u{0}")), "file");
    }
}
