//! Secrets the server hands out (signup, join, web tokens): random values, stored only as
//! their SHA-256, and join tokens for nodes, access points and bots.

use std::time::Duration;

use base64::Engine;
use dt_proto::v1 as pb;
use dt_types::audit::{AuditEvent, EventType};
use dt_types::resource::Resource;
use dt_types::resource::{TokenRole, TokenSpec};
use dt_types::{AnyResource, UserName, Verb};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::plan;
use crate::server::AuthServer;

pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl AuthServer {
    pub(crate) async fn create_join_token(
        &self,
        caller: &Caller,
        req: pb::CreateJoinTokenRequest,
    ) -> ApiResult<pb::CreateJoinTokenResponse> {
        self.authorize(caller, "token", Verb::Create)?;
        let Some(role) = TokenRole::parse(&req.r#type) else {
            return Err(ApiError::InvalidArgument(format!(
                "token type {:?} (use node, db, kube, app, desktop, mdm or bot)",
                req.r#type
            )));
        };
        let bot = if role == TokenRole::Bot {
            Some(self.authorize_bot_token(caller, &req.bot_name).await?)
        } else {
            None
        };
        let ttl = if req.ttl_seconds == 0 {
            Duration::from_secs(1800)
        } else {
            Duration::from_secs(req.ttl_seconds)
        };
        let token = random_token();
        let hash = sha256_hex(&token);
        let name = hash[..16].to_string();
        let expires = self.env.now() + ttl;
        let mut res: Resource<TokenSpec> = Resource::new(
            name.clone(),
            TokenSpec {
                roles: vec![role],
                bot_name: bot.map(UserName::into_string),
                token_hash: hash.clone(),
            },
        );
        res.metadata.expires = Some(expires);
        AnyResource::Token(res.clone())
            .validate()
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let event = AuditEvent::new(EventType::JoinTokenCreate, true, self.env.now())
            .user(caller.name())
            .resource("token", &name)
            .message(format!("{} join token", req.r#type));
        let plan = plan::tokens::join_token_created(&res, event).map_err(ApiError::internal)?;
        self.commit(plan).await?;
        Ok(pb::CreateJoinTokenResponse {
            token,
            name,
            expires_unix: expires.unix_timestamp(),
        })
    }
}
