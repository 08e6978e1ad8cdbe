//! Bots: machine users that log in with a join token instead of a password (`dtctl bots
//! add`, `dtsh login --bot`), who may mint a token for one, and why a bot cannot be reset
//! like a person.

use std::time::Duration;

use dt_proto::v1 as pb;
use dt_types::audit::{AuditEvent, EventType};
use dt_types::resource::{Resource, RoleSpec, TokenRole, TokenSpec, Traits, UserSpec};
use dt_types::{AnyResource, User, UserName, Verb};

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::listener::Peer;
use crate::plan;
use crate::resources::stored_spec;
use crate::server::{AuthServer, LOCAL_ADMIN};
use crate::tokens::{random_token, sha256_hex};

/// Default lifetime of a bot join token.
pub const DEFAULT_BOT_TOKEN_TTL: Duration = Duration::from_secs(3600);

fn invalid_bot_token() -> ApiError {
    ApiError::Unauthenticated(
        "invalid or expired bot token; ask an admin for a new one (`dtctl bots add NAME --roles=...`)"
            .into(),
    )
}

impl AuthServer {
    /// `dtctl bots add`: a bot user and its join token, in one transaction.
    pub async fn add_bot(
        &self,
        caller: &Caller,
        req: pb::AddBotRequest,
    ) -> ApiResult<pb::AddBotResponse> {
        self.authorize(caller, "user", Verb::Create)?;
        self.authorize(caller, "token", Verb::Create)?;
        let name = UserName::parse(req.name.trim())?;
        if name == LOCAL_ADMIN {
            return Err(ApiError::InvalidArgument(format!(
                "{LOCAL_ADMIN:?} is a reserved name"
            )));
        }
        if req.roles.is_empty() {
            return Err(ApiError::InvalidArgument(
                "give the bot at least one role with --roles".into(),
            ));
        }
        for role in &req.roles {
            if self.get_resource::<RoleSpec>(role).await?.is_none() {
                return Err(ApiError::InvalidArgument(format!(
                    "role {role:?} does not exist (see `dtctl get roles`)"
                )));
            }
        }
        let now = self.env.now();
        let user: User = Resource::new(
            name.to_string(),
            UserSpec {
                roles: req.roles.clone(),
                traits: Traits {
                    logins: req.logins.clone(),
                },
                created_by: Some(caller.name().to_string()),
                created_at: Some(now),
                bot: true,
            },
        );
        AnyResource::User(user.clone())
            .validate()
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let ttl = if req.token_ttl_seconds == 0 {
            DEFAULT_BOT_TOKEN_TTL
        } else {
            Duration::from_secs(req.token_ttl_seconds)
        };
        let token = random_token();
        let hash = sha256_hex(&token);
        let token_name = hash[..16].to_string();
        let expires = now + ttl;
        let mut tok: Resource<TokenSpec> = Resource::new(
            token_name.clone(),
            TokenSpec {
                roles: vec![TokenRole::Bot],
                bot_name: Some(name.to_string()),
                token_hash: hash.clone(),
            },
        );
        tok.metadata.expires = Some(expires);
        AnyResource::Token(tok.clone())
            .validate()
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let event = AuditEvent::new(EventType::UserCreate, true, now)
            .user(caller.name())
            .resource("user", name.as_str())
            .message(format!(
                "bot with roles {}; join token {token_name}",
                req.roles.join(",")
            ))
            .remote_addr(caller.peer.addr.ip().to_string());
        let plan = plan::bots::bot_added(&user, &tok, event).map_err(ApiError::internal)?;
        self.commit(plan).await?;
        Ok(pb::AddBotResponse {
            token,
            token_name,
            expires_unix: expires.unix_timestamp(),
        })
    }

    /// A login with a bot join token (`dtsh login --bot --token=T`): certificates for the
    /// token's bot user, marked as a bot.
    pub async fn bot_login(
        &self,
        req: pb::LoginRequest,
        peer: &Peer,
    ) -> ApiResult<pb::LoginResponse> {
        let remote = peer.addr.ip().to_string();
        let limiter_key = format!("bot@{remote}");
        let fail = |who: String, why: &'static str| {
            let remote = remote.clone();
            let limiter_key = limiter_key.clone();
            async move {
                self.record_failure(&limiter_key).await?;
                self.audit
                    .emit(
                        AuditEvent::new(EventType::UserLogin, false, self.env.now())
                            .user(who)
                            .message(why)
                            .remote_addr(remote),
                    )
                    .await
                    .map_err(ApiError::from)
            }
        };
        if let Err(wait) = self
            .login_failures
            .check(self.backend.as_ref(), &limiter_key)
            .await?
        {
            return Err(ApiError::TooMany(format!(
                "too many failed bot logins from this address; try again in {} s",
                wait.as_secs().max(1)
            )));
        }
        // The bot's name is optional; when given, it must be a user name (a malformed one
        // is a failed login like any other, counted and audited).
        let wanted = req.username.trim();
        let wanted = if wanted.is_empty() {
            None
        } else {
            match UserName::parse(wanted) {
                Ok(name) => Some(name),
                Err(e) => {
                    fail(wanted.to_string(), "malformed bot name").await?;
                    return Err(e.into());
                }
            }
        };
        let Some((token, _)) = self.find_join_token(&req.bot_token, TokenRole::Bot).await? else {
            fail(
                wanted.map_or_else(|| "unknown".into(), UserName::into_string),
                "invalid or expired bot token",
            )
            .await?;
            return Err(invalid_bot_token());
        };
        let bot_name = token.spec.bot_name.clone().unwrap_or_default();
        if let Some(wanted) = wanted
            && wanted != bot_name
        {
            fail(wanted.into_string(), "bot token issued for another bot").await?;
            return Err(invalid_bot_token());
        }
        let user = match self.get_resource::<UserSpec>(&bot_name).await? {
            Some((u, _)) if u.spec.bot => u,
            _ => {
                fail(bot_name, "bot token names no bot user").await?;
                return Err(invalid_bot_token());
            }
        };
        self.login_failures
            .clear(self.backend.as_ref(), &limiter_key)
            .await?;
        let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds));
        let resp = self
            .issue_user_certs(
                &user,
                &req.ssh_public_key,
                &req.tls_public_key_der,
                ttl,
                &remote,
            )
            .await?;
        self.audit
            .emit(
                AuditEvent::new(EventType::UserLogin, true, self.env.now())
                    .user(user.name())
                    .resource("token", token.name())
                    .message("bot login with a join token")
                    .remote_addr(&remote),
            )
            .await?;
        Ok(resp)
    }

    /// Who may mint a join token for an existing bot, i.e. log in as it: a caller who may
    /// manage that bot user (`user: update`, with the `token: create` already checked),
    /// the rule of `dtctl bots add` (`user: create` + `token: create`) for a bot that
    /// exists. The bot must exist and be a bot; its name, checked, is returned. Refusals
    /// are audited.
    pub(crate) async fn authorize_bot_token(
        &self,
        caller: &Caller,
        bot: &str,
    ) -> ApiResult<UserName> {
        let checked = if bot.is_empty() {
            Err(ApiError::InvalidArgument(
                "name the bot with --bot-name=NAME (a bot from `dtctl bots add`)".into(),
            ))
        } else {
            match UserName::parse(bot) {
                Err(e) => Err(ApiError::from(e)),
                Ok(name) => match self.get_resource::<UserSpec>(name.as_str()).await? {
                    None => Err(ApiError::NotFound(format!(
                        "bot {bot:?} does not exist; create it with `dtctl bots add {bot} --roles=...`"
                    ))),
                    Some((u, _)) if !u.spec.bot => Err(ApiError::InvalidArgument(format!(
                        "user {bot:?} is not a bot; bot join tokens are only for bots from `dtctl bots add`"
                    ))),
                    Some(_) => self
                        .authorize(caller, "user", Verb::Update)
                        .map(|()| name)
                        .map_err(|e| {
                            ApiError::PermissionDenied(format!(
                                "a bot join token lets its holder act as bot {bot:?}, so it needs `update` on user as well as `create` on token: {e}"
                            ))
                        }),
                },
            }
        };
        let err = match checked {
            Ok(name) => return Ok(name),
            Err(err) => err,
        };
        self.audit
            .emit(
                AuditEvent::new(EventType::JoinTokenCreate, false, self.env.now())
                    .user(caller.name())
                    .resource("user", bot)
                    .message(format!("refused bot join token: {err}"))
                    .remote_addr(caller.peer.addr.ip().to_string()),
            )
            .await?;
        Err(err)
    }

    /// `users reset` sets a password through a signup token: on a bot it would hand the
    /// bot to whoever holds the token. Bots log in with join tokens only; refused, audited.
    pub(crate) async fn refuse_bot_reset(
        &self,
        caller: &Caller,
        name: &UserName,
        item: &dt_store::Item,
    ) -> ApiResult<()> {
        let Some(spec) = stored_spec::<UserSpec>(Some(item)) else {
            return Ok(());
        };
        if !spec.bot {
            return Ok(());
        }
        let msg = format!(
            "user {name:?} is a bot: bots have no password and can't be reset; give it a new join token with `dtctl tokens add --type=bot --bot-name={name}` (needs update on user and create on token)"
        );
        self.audit
            .emit(
                AuditEvent::new(EventType::UserUpdate, false, self.env.now())
                    .user(caller.name())
                    .resource("user", name.as_str())
                    .message(format!("refused users reset: {msg}"))
                    .remote_addr(caller.peer.addr.ip().to_string()),
            )
            .await?;
        Err(ApiError::FailedPrecondition(msg))
    }
}
