//! Users' writes: creation with a signup token, and reset (a new token, the password gone).
//! One live signup token per user: every plan that issues one revokes the previous one,
//! guarded so that a token issued meanwhile makes the write fail instead of surviving it.

use dt_store::{Condition, Op};
use dt_types::audit::AuditEvent;
use dt_types::{Kind, User, UserName};
use time::OffsetDateTime;

use super::{Guard, Refusal, WritePlan};
use crate::keys;

/// A signup token about to be issued: the SHA-256 of the secret and its expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSignupToken {
    pub hash: String,
    pub expires: OffsetDateTime,
}

impl NewSignupToken {
    /// The token (hash → user) and the user's index (user → hash), both expiring with it.
    pub fn ops(&self, user: &str) -> Vec<Op> {
        vec![
            Op::Put {
                key: keys::signup_token(&self.hash),
                value: user.as_bytes().to_vec(),
                expires: Some(self.expires),
            },
            Op::Put {
                key: keys::signup_token_index(user),
                value: self.hash.clone().into_bytes(),
                expires: Some(self.expires),
            },
        ]
    }
}

/// A user's live signup token as read: the revision of its index and the token's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveSignupToken {
    pub index_revision: i64,
    pub hash: String,
}

/// The revocation of `user`'s live signup token (`live`, as read; none if it had none):
/// the guard that no other token was issued since the read, and the token's deletion.
pub fn signup_revoked<R>(
    user: &str,
    live: Option<&LiveSignupToken>,
    refusal: R,
) -> (Guard<R>, Option<Op>) {
    let index = keys::signup_token_index(user);
    match live {
        Some(t) => (
            Guard {
                condition: Condition::Revision(index, t.index_revision),
                refusal,
            },
            Some(Op::Delete {
                key: keys::signup_token(&t.hash),
            }),
        ),
        None => (
            Guard {
                condition: Condition::NotExists(index),
                refusal,
            },
            None,
        ),
    }
}

/// `dtctl users add`: the user and its signup token, only if no user has the name.
pub fn user_created(
    user: &User,
    token: &NewSignupToken,
    event: AuditEvent,
) -> Result<WritePlan<Refusal>, serde_json::Error> {
    let name = user.metadata.name.clone();
    let key = keys::resource(Kind::User, &name);
    let mut ops = vec![Op::Put {
        key: key.clone(),
        value: serde_json::to_vec(user)?,
        expires: None,
    }];
    ops.extend(token.ops(&name));
    Ok(WritePlan {
        guards: vec![Guard {
            condition: Condition::NotExists(key),
            refusal: Refusal::UserExists { name },
        }],
        ops,
        events: vec![event],
    })
}

/// `dtctl users reset`: the password removed, the live signup token (`live`) revoked and
/// a new one issued, only if neither the user (read at `user_revision`) nor its token
/// index changed.
pub fn user_reset(
    name: &UserName,
    user_revision: i64,
    live: Option<&LiveSignupToken>,
    token: &NewSignupToken,
    event: AuditEvent,
) -> WritePlan<Refusal> {
    let name = name.as_str();
    let (revoke_guard, revoke) = signup_revoked(name, live, Refusal::UserChanged);
    let mut ops = vec![Op::Delete {
        key: keys::password(name),
    }];
    ops.extend(revoke);
    ops.extend(token.ops(name));
    WritePlan {
        guards: vec![
            Guard {
                condition: Condition::Revision(keys::resource(Kind::User, name), user_revision),
                refusal: Refusal::UserChanged,
            },
            revoke_guard,
        ],
        ops,
        events: vec![event],
    }
}

/// Why a signup login's write was refused (the audit log's reason; the client is only told
/// its credentials were refused).
pub const SIGNUP_TOKEN_USED: &str = "signup token already used";

/// A signup login: the signup token (`token_hash`, read at `revision`) spent and the
/// user's password set (`password_hash`, argon2), in one write; a concurrent second use of
/// the same token finds it changed and is refused.
pub fn signup_used(
    token_hash: &str,
    revision: i64,
    user: &UserName,
    password_hash: String,
    event: AuditEvent,
) -> WritePlan {
    let key = keys::signup_token(token_hash);
    WritePlan {
        guards: vec![Guard {
            condition: Condition::Revision(key.clone(), revision),
            refusal: SIGNUP_TOKEN_USED,
        }],
        ops: vec![
            Op::Delete { key },
            Op::Put {
                key: keys::password(user.as_str()),
                value: password_hash.into_bytes(),
                expires: None,
            },
        ],
        events: vec![event],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::audit::EventType;
    use dt_types::resource::{Resource, Traits, UserSpec};
    use proptest::prelude::*;

    fn token(hash: &str) -> NewSignupToken {
        NewSignupToken {
            hash: hash.into(),
            expires: OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap(),
        }
    }

    fn event() -> AuditEvent {
        AuditEvent::new(EventType::UserCreate, true, OffsetDateTime::UNIX_EPOCH)
    }

    fn user(name: &str) -> User {
        Resource::new(
            name.to_string(),
            UserSpec {
                roles: vec!["access".into()],
                traits: Traits::default(),
                created_by: None,
                created_at: None,
                bot: false,
            },
        )
    }

    #[test]
    fn a_created_user_is_refused_by_name_if_it_exists() {
        let plan = user_created(&user("bob"), &token("h1"), event()).unwrap();
        assert_eq!(
            plan.conditions(),
            vec![Condition::NotExists(keys::resource(Kind::User, "bob"))]
        );
        assert_eq!(
            plan.guards[0].refusal,
            Refusal::UserExists { name: "bob".into() }
        );
        let written: Vec<_> = plan
            .ops
            .iter()
            .map(|o| match o {
                Op::Put { key, .. } => key.clone(),
                other => panic!("a creation only puts: {other:?}"),
            })
            .collect();
        assert_eq!(
            written,
            vec![
                keys::resource(Kind::User, "bob"),
                keys::signup_token("h1"),
                keys::signup_token_index("bob"),
            ]
        );
    }

    #[test]
    fn a_signup_spends_the_token_it_read_and_sets_the_password() {
        let bob = UserName::parse("bob").unwrap();
        let plan = signup_used("h9", 12, &bob, "$argon2id$x".into(), event());
        assert_eq!(
            plan.conditions(),
            vec![Condition::Revision(keys::signup_token("h9"), 12)]
        );
        assert_eq!(plan.guards[0].refusal, SIGNUP_TOKEN_USED);
        assert_eq!(
            plan.ops,
            vec![
                Op::Delete {
                    key: keys::signup_token("h9")
                },
                Op::Put {
                    key: keys::password("bob"),
                    value: b"$argon2id$x".to_vec(),
                    expires: None,
                },
            ]
        );
    }

    proptest! {
        /// Whatever the user's live token: a reset deletes the password, deletes exactly
        /// the token it read (if any) and issues the new one, guarded on the user and on
        /// the token index being as read; every refusal is "user changed".
        #[test]
        fn a_reset_revokes_exactly_the_token_it_read(
            name in "[a-z][a-z0-9]{0,15}",
            user_rev in 1i64..i64::MAX,
            live in proptest::option::of((1i64..i64::MAX, "[0-9a-f]{64}")),
        ) {
            let live = live.map(|(index_revision, hash)| LiveSignupToken { index_revision, hash });
            let new = token("new");
            let plan = user_reset(&name.parse().unwrap(), user_rev, live.as_ref(), &new, event());
            let index = keys::signup_token_index(&name);
            let index_guard = match &live {
                Some(t) => Condition::Revision(index, t.index_revision),
                None => Condition::NotExists(index),
            };
            prop_assert_eq!(
                plan.conditions(),
                vec![Condition::Revision(keys::resource(Kind::User, &name), user_rev), index_guard]
            );
            prop_assert!(plan.guards.iter().all(|g| g.refusal == Refusal::UserChanged));
            let mut expected = vec![Op::Delete { key: keys::password(&name) }];
            if let Some(t) = &live {
                expected.push(Op::Delete { key: keys::signup_token(&t.hash) });
            }
            expected.extend(new.ops(&name));
            prop_assert_eq!(plan.ops, expected);
        }
    }
}
