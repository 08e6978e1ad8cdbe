//! Users: creation with a signup token, and reset (bots are in `bots`).

use std::time::Duration;

use dt_proto::v1 as pb;
use dt_types::audit::{AuditEvent, EventType};
use dt_types::resource::Resource;
use dt_types::resource::{RoleSpec, Traits, UserSpec};
use dt_types::{AnyResource, Kind, User, UserName, Verb};

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::plan::{self, users::LiveSignupToken, users::NewSignupToken};
use crate::server::{AuthServer, LOCAL_ADMIN};
use crate::tokens::{random_token, sha256_hex};

pub const DEFAULT_SIGNUP_TTL: Duration = Duration::from_secs(3600);
pub const MAX_SIGNUP_TTL: Duration = Duration::from_secs(7 * 86400);

impl AuthServer {
    /// A fresh signup token for `name`: the secret, and its hash and expiry to store.
    pub(crate) fn new_signup_token(&self, ttl_seconds: u64) -> ApiResult<(String, NewSignupToken)> {
        let ttl = if ttl_seconds == 0 {
            DEFAULT_SIGNUP_TTL
        } else {
            Duration::from_secs(ttl_seconds)
        };
        if ttl > MAX_SIGNUP_TTL {
            return Err(ApiError::InvalidArgument(
                "signup token TTL is at most 7d".into(),
            ));
        }
        let token = random_token();
        let new = NewSignupToken {
            hash: sha256_hex(&token),
            expires: self.env.now() + ttl,
        };
        Ok((token, new))
    }

    /// `user`'s live signup token, as stored (one live token per user: a reset or a
    /// removal revokes it, see [`plan::users::signup_revoked`]).
    pub(crate) async fn live_signup_token(
        &self,
        user: &UserName,
    ) -> ApiResult<Option<LiveSignupToken>> {
        Ok(self
            .backend
            .get(&keys::signup_token_index(user.as_str()))
            .await?
            .map(|item| LiveSignupToken {
                index_revision: item.revision,
                hash: String::from_utf8_lossy(&item.value).into_owned(),
            }))
    }

    pub(crate) async fn create_user(
        &self,
        caller: &Caller,
        req: pb::CreateUserRequest,
    ) -> ApiResult<pb::CreateUserResponse> {
        self.authorize(caller, "user", Verb::Create)?;
        let name = UserName::parse(req.name)?;
        if name == LOCAL_ADMIN {
            return Err(ApiError::InvalidArgument(format!(
                "{LOCAL_ADMIN:?} is a reserved name"
            )));
        }
        if req.roles.is_empty() {
            return Err(ApiError::InvalidArgument(
                "give the user at least one role with --roles (e.g. --roles=access)".into(),
            ));
        }
        for role in &req.roles {
            if self.get_resource::<RoleSpec>(role).await?.is_none() {
                return Err(ApiError::InvalidArgument(format!(
                    "role {role:?} does not exist (see `dtctl get roles`)"
                )));
            }
        }
        let mut user: User = Resource::new(
            name.to_string(),
            UserSpec {
                roles: req.roles.clone(),
                traits: Traits {
                    logins: req.logins.clone(),
                },
                created_by: Some(caller.name().to_string()),
                created_at: Some(self.env.now()),
                bot: false,
            },
        );
        user.metadata.revision = None;
        AnyResource::User(user.clone())
            .validate()
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let (token, new) = self.new_signup_token(req.token_ttl_seconds)?;
        let event = AuditEvent::new(EventType::UserCreate, true, self.env.now())
            .user(caller.name())
            .resource("user", name.as_str())
            .remote_addr(caller.peer.addr.ip().to_string());
        let plan = plan::users::user_created(&user, &new, event).map_err(ApiError::internal)?;
        self.commit(plan).await?;
        Ok(pb::CreateUserResponse {
            signup_token: token,
            expires_unix: new.expires.unix_timestamp(),
        })
    }

    pub(crate) async fn reset_user(
        &self,
        caller: &Caller,
        req: pb::ResetUserRequest,
    ) -> ApiResult<pb::CreateUserResponse> {
        self.authorize(caller, "user", Verb::Update)?;
        let name = UserName::parse(req.name)?;
        let key = keys::resource(Kind::User, name.as_str());
        let Some(item) = self.backend.get(&key).await? else {
            return Err(ApiError::NotFound(format!("user {name:?} not found")));
        };
        self.refuse_bot_reset(caller, &name, &item).await?;
        let (token, new) = self.new_signup_token(req.token_ttl_seconds)?;
        // The previous token (unused, from `users add` or an earlier reset) stops working.
        let live = self.live_signup_token(&name).await?;
        let event = AuditEvent::new(EventType::UserUpdate, true, self.env.now())
            .user(caller.name())
            .resource("user", name.as_str())
            .message("password reset; signup token issued");
        self.commit(plan::users::user_reset(
            &name,
            item.revision,
            live.as_ref(),
            &new,
            event,
        ))
        .await?;
        Ok(pb::CreateUserResponse {
            signup_token: token,
            expires_unix: new.expires.unix_timestamp(),
        })
    }
}
