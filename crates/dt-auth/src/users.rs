//! Users: creation with a signup token, and reset (bots are in `bots`).

use std::time::Duration;

use dt_proto::v1 as pb;
use dt_store::{Condition, Op, StoreError};
use dt_types::audit::{AuditEvent, EventType};
use dt_types::resource::Resource;
use dt_types::resource::{RoleSpec, Traits, UserSpec};
use dt_types::{AnyResource, Kind, User, Verb};
use time::OffsetDateTime;

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::keys;
use crate::resources::to_json;
use crate::server::{AuthServer, LOCAL_ADMIN};
use crate::tokens::{random_token, sha256_hex};

pub const DEFAULT_SIGNUP_TTL: Duration = Duration::from_secs(3600);
pub const MAX_SIGNUP_TTL: Duration = Duration::from_secs(7 * 86400);

impl AuthServer {
    /// A fresh signup token for `name`: the token, its expiry, and the writes that store
    /// its hash and make it the user's one live signup token.
    pub(crate) async fn new_signup_token(
        &self,
        name: &str,
        ttl_seconds: u64,
    ) -> ApiResult<(String, OffsetDateTime, Vec<Op>)> {
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
        let hash = sha256_hex(&token);
        let expires = OffsetDateTime::now_utc() + ttl;
        let ops = vec![
            Op::Put {
                key: keys::signup_token(&hash),
                value: name.as_bytes().to_vec(),
                expires: Some(expires),
            },
            Op::Put {
                key: keys::signup_token_index(name),
                value: hash.into_bytes(),
                expires: Some(expires),
            },
        ];
        Ok((token, expires, ops))
    }

    /// The write that revokes `user`'s live signup token (if any), and a condition that
    /// fails if another token was issued meanwhile. One live token per user: a reset or a
    /// removal leaves no older token usable.
    pub(crate) async fn revoke_signup_token(
        &self,
        user: &str,
    ) -> ApiResult<(Condition, Option<Op>)> {
        let index = keys::signup_token_index(user);
        Ok(match self.backend.get(&index).await? {
            Some(item) => {
                let hash = String::from_utf8_lossy(&item.value).into_owned();
                (
                    Condition::Revision(index, item.revision),
                    Some(Op::Delete {
                        key: keys::signup_token(&hash),
                    }),
                )
            }
            None => (Condition::NotExists(index), None),
        })
    }

    pub(crate) async fn create_user(
        &self,
        caller: &Caller,
        req: pb::CreateUserRequest,
    ) -> ApiResult<pb::CreateUserResponse> {
        self.authorize(caller, "user", Verb::Create)?;
        if req.name == LOCAL_ADMIN {
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
            req.name.clone(),
            UserSpec {
                roles: req.roles.clone(),
                traits: Traits {
                    logins: req.logins.clone(),
                },
                created_by: Some(caller.name().to_string()),
                created_at: Some(OffsetDateTime::now_utc()),
                bot: false,
            },
        );
        user.metadata.revision = None;
        AnyResource::User(user.clone())
            .validate()
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let (token, expires, token_ops) = self
            .new_signup_token(&req.name, req.token_ttl_seconds)
            .await?;
        let key = keys::resource(Kind::User, &req.name);
        let mut ops = vec![Op::Put {
            key: key.clone(),
            value: to_json(&user)?,
            expires: None,
        }];
        ops.extend(token_ops);
        let result = self
            .audit
            .write_with(
                vec![Condition::NotExists(key)],
                ops,
                AuditEvent::new(EventType::UserCreate, true, OffsetDateTime::now_utc())
                    .user(caller.name())
                    .resource("user", &req.name)
                    .remote_addr(caller.peer.addr.ip().to_string()),
            )
            .await;
        match result {
            Ok(_) => Ok(pb::CreateUserResponse {
                signup_token: token,
                expires_unix: expires.unix_timestamp(),
            }),
            Err(StoreError::ConditionFailed { .. }) => Err(ApiError::AlreadyExists(format!(
                "user {:?} already exists; use `dtctl users reset {}` for a new signup token",
                req.name, req.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn reset_user(
        &self,
        caller: &Caller,
        req: pb::ResetUserRequest,
    ) -> ApiResult<pb::CreateUserResponse> {
        self.authorize(caller, "user", Verb::Update)?;
        let key = keys::resource(Kind::User, &req.name);
        let Some(item) = self.backend.get(&key).await? else {
            return Err(ApiError::NotFound(format!("user {:?} not found", req.name)));
        };
        self.refuse_bot_reset(caller, &req.name, &item).await?;
        let (token, expires, token_ops) = self
            .new_signup_token(&req.name, req.token_ttl_seconds)
            .await?;
        // The previous token (unused, from `users add` or an earlier reset) stops working.
        let (revoke_cond, revoke) = self.revoke_signup_token(&req.name).await?;
        let mut ops = vec![Op::Delete {
            key: keys::password(&req.name),
        }];
        ops.extend(revoke);
        ops.extend(token_ops);
        self.audit
            .write_with(
                vec![Condition::Revision(key, item.revision), revoke_cond],
                ops,
                AuditEvent::new(EventType::UserUpdate, true, OffsetDateTime::now_utc())
                    .user(caller.name())
                    .resource("user", &req.name)
                    .message("password reset; signup token issued"),
            )
            .await
            .map_err(|e| match e {
                StoreError::ConditionFailed { .. } => {
                    ApiError::Conflict("user changed meanwhile; try again".into())
                }
                other => other.into(),
            })?;
        Ok(pb::CreateUserResponse {
            signup_token: token,
            expires_unix: expires.unix_timestamp(),
        })
    }
}

impl AuthServer {}
