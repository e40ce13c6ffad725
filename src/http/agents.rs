//! `/v1/agents`: create, list, get, patch, delete, rotate the token (admin;
//! an agent may read itself).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::agent::{
    valid_capacity, valid_name, Agent, AgentProfile, Retire, SupervisorActivity, TokenRotated,
    UpdateProfile,
};
use crate::error::ApiError;
use crate::http::{authenticate, read_json, require_admin, Principal, State};
use crate::journal::record::{self, RecordRef};
use crate::protocol::{Activity, AgentView, Id, PerChannel, SupervisorAction};
use crate::router::GetAgents;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub capacity: PerChannel,
    #[serde(default)]
    pub skills: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchAgent {
    pub name: Option<String>,
    pub capacity: Option<PerChannel>,
    pub skills: Option<Vec<String>>,
    /// A supervisor sets the agent's activity (`offline` logs it out).
    pub activity: Option<Activity>,
}

pub async fn create(
    req: HttpRequest,
    state: State,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let body: CreateAgent = read_json(body).await?;
    let profile = AgentProfile::new(&body.id, body.name, body.capacity, body.skills)?;
    let token = Agent::create(&state, profile.clone(), None)?;
    let view = AgentView {
        id: profile.id,
        name: profile.name,
        capacity: profile.capacity,
        skills: profile.skills,
        activity: Activity::Offline,
        connected: false,
        load: PerChannel::default(),
    };
    let mut json = serde_json::to_value(view).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    json["token"] = serde_json::Value::String(token);
    Ok(HttpResponse::Created().json(json))
}

pub async fn list(req: HttpRequest, state: State) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let views = state
        .router
        .send(GetAgents { id: None })
        .await
        .map_err(ApiError::mailbox)?;
    Ok(HttpResponse::Ok().json(views))
}

/// Agent `id` as the router sees it; `not_found` if there is none.
pub async fn view_of(state: &State, id: &str) -> Result<AgentView, ApiError> {
    state
        .router
        .send(GetAgents {
            id: Some(id.into()),
        })
        .await
        .map_err(ApiError::mailbox)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::NotFound(format!("agent {id} does not exist")))
}

pub async fn get(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    match authenticate(&req, &state)? {
        Principal::Admin => {}
        Principal::Agent(me) if *me == *id.as_str() => {}
        _ => {
            return Err(ApiError::Unauthorized(
                "this endpoint needs the admin token".into(),
            ))
        }
    }
    Ok(HttpResponse::Ok().json(view_of(&state, &id).await?))
}

pub async fn update(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let body: PatchAgent = read_json(body).await?;
    if let Some(name) = &body.name {
        valid_name(name)?;
    }
    if let Some(c) = &body.capacity {
        valid_capacity(c)?;
    }
    if body.activity == Some(Activity::NotResponding) {
        return Err(ApiError::BadRequest(
            "activity: not_responding is set by the broker; choose available, break or offline"
                .into(),
        ));
    }
    let entry = state
        .agent(&id)
        .ok_or_else(|| ApiError::NotFound(format!("agent {id} does not exist")))?;
    let capacity = body.capacity;
    entry
        .addr
        .send(UpdateProfile {
            name: body.name,
            capacity: body.capacity,
            skills: body.skills,
        })
        .await
        .map_err(ApiError::mailbox)?;
    if let Some(capacity) = capacity {
        publish_action(
            &state,
            SupervisorAction::SetCapacity {
                agent_id: id.as_str().into(),
                capacity,
            },
        );
    }
    if let Some(activity) = body.activity {
        entry
            .addr
            .send(SupervisorActivity { activity })
            .await
            .map_err(ApiError::mailbox)??;
        publish_action(
            &state,
            SupervisorAction::SetActivity {
                agent_id: id.as_str().into(),
                activity,
            },
        );
    }
    Ok(HttpResponse::Ok().json(view_of(&state, &id).await?))
}

/// Tell supervisors and the webhooks what the admin did.
fn publish_action(state: &State, action: SupervisorAction) {
    state.supervisor_action(crate::http::ADMIN_ACTOR, action);
}

pub async fn delete(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let entry = state
        .remove_agent(&id)
        .ok_or_else(|| ApiError::NotFound(format!("agent {id} does not exist")))?;
    let id: Id = id.as_str().into();
    record::write(state.journal.as_ref(), RecordRef::AgentRemoved { id: &id });
    // Answer once the agent has told the router: a client's next question
    // (GET /v1/agents) then finds the agent gone. An agent actor already
    // stopped has nothing left to tell.
    let _ = entry.addr.send(Retire).await;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/agents/{id}/token`: a new generated token; the old one stops
/// working at once (HTTP and new sockets) and a desktop opened with it is
/// closed with `1008 token rotated`.
pub async fn rotate_token(
    req: HttpRequest,
    state: State,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let token = crate::ids::token();
    let entry = state.rotate_agent_token(&id, token.clone())?;
    let agent: Id = id.as_str().into();
    record::write(
        state.journal.as_ref(),
        RecordRef::AgentTokenRotated {
            id: &agent,
            token: &token,
            expires_at: entry.expires_at,
        },
    );
    entry.addr.do_send(TokenRotated);
    Ok(HttpResponse::Ok().json(serde_json::json!({ "id": id.as_str(), "token": token })))
}
