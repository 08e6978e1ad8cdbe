//! Generic resources' writes (`dtctl create`, `dtctl edit`, `dtctl rm`: roles, locks,
//! users, tokens, the cluster auth preference): the document put or deleted under the
//! condition the editor asked for, with what must go with it.

use dt_store::{Condition, Op};
use dt_types::audit::AuditEvent;
use dt_types::{Kind, UserName};
use time::OffsetDateTime;

use super::users::{LiveSignupToken, signup_revoked};
use super::{Guard, Refusal, WritePlan};
use crate::keys;

/// What an upsert expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The revision the editor read (`expected_revision`).
    Revision(i64),
    /// Nothing: a creation.
    Absent,
    /// Whatever is there now (`--force`): the revision just read, or nothing.
    Current(Option<i64>),
}

/// A resource created or replaced: its document (`value`, expiring at `expires`), only if
/// what is stored is what `expect` says.
pub fn upserted(
    kind: Kind,
    name: &str,
    value: Vec<u8>,
    expires: Option<OffsetDateTime>,
    expect: Expect,
    event: AuditEvent,
) -> WritePlan<Refusal> {
    let key = keys::resource(kind, name);
    let condition = match expect {
        Expect::Revision(rev) | Expect::Current(Some(rev)) => Condition::Revision(key.clone(), rev),
        Expect::Absent | Expect::Current(None) => Condition::NotExists(key.clone()),
    };
    WritePlan {
        guards: vec![Guard {
            condition,
            refusal: Refusal::ResourceEdited {
                kind,
                name: name.to_string(),
            },
        }],
        ops: vec![Op::Put {
            key,
            value,
            expires,
        }],
        events: vec![event],
    }
}

/// What goes with a removed resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leftovers {
    None,
    /// A user: its password, its signup token index, and its live signup token (as read),
    /// which would otherwise set the password of a later user with the same name.
    User {
        /// The removed user (the resource's name, as a user name).
        user: UserName,
        live_signup: Option<LiveSignupToken>,
    },
    /// A join token: its hash index (when the stored token could be read).
    Token {
        token_hash: Option<String>,
    },
}

/// A resource removed (read at `revision`), with its leftovers, only if it did not change
/// since (nor, for a user, its signup token).
pub fn deleted(
    kind: Kind,
    name: &str,
    revision: i64,
    leftovers: &Leftovers,
    event: AuditEvent,
) -> WritePlan<Refusal> {
    let key = keys::resource(kind, name);
    let refusal = Refusal::ResourceChanged {
        kind,
        name: name.to_string(),
    };
    let mut guards = vec![Guard {
        condition: Condition::Revision(key.clone(), revision),
        refusal: refusal.clone(),
    }];
    let mut ops = vec![Op::Delete { key }];
    match leftovers {
        Leftovers::None => {}
        Leftovers::User { user, live_signup } => {
            let user = user.as_str();
            ops.push(Op::Delete {
                key: keys::password(user),
            });
            let (guard, revoke) = signup_revoked(user, live_signup.as_ref(), refusal);
            guards.push(guard);
            ops.extend(revoke);
            ops.push(Op::Delete {
                key: keys::signup_token_index(user),
            });
        }
        Leftovers::Token { token_hash } => {
            if let Some(hash) = token_hash {
                ops.push(Op::Delete {
                    key: keys::join_token_index(hash),
                });
            }
        }
    }
    WritePlan {
        guards,
        ops,
        events: vec![event],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_types::audit::EventType;
    use proptest::prelude::*;

    fn event() -> AuditEvent {
        AuditEvent::new(EventType::LockCreate, true, OffsetDateTime::UNIX_EPOCH)
    }

    proptest! {
        /// The condition follows what the editor expects, and a refusal names the
        /// resource; the one write is the document with its expiry.
        #[test]
        fn an_upsert_is_guarded_by_what_the_editor_expects(
            name in "[a-z][a-z0-9-]{0,20}",
            rev in 1i64..i64::MAX,
            which in 0u8..4,
        ) {
            let expect = match which {
                0 => Expect::Revision(rev),
                1 => Expect::Absent,
                2 => Expect::Current(Some(rev)),
                _ => Expect::Current(None),
            };
            let expires = Some(OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap());
            let plan = upserted(Kind::Lock, &name, b"{}".to_vec(), expires, expect, event());
            let key = keys::resource(Kind::Lock, &name);
            let cond = if matches!(which, 0 | 2) {
                Condition::Revision(key.clone(), rev)
            } else {
                Condition::NotExists(key.clone())
            };
            prop_assert_eq!(plan.conditions(), vec![cond]);
            prop_assert_eq!(
                &plan.guards[0].refusal,
                &Refusal::ResourceEdited { kind: Kind::Lock, name: name.clone() }
            );
            prop_assert_eq!(plan.ops, vec![Op::Put { key, value: b"{}".to_vec(), expires }]);
        }

        /// A removed user takes its password, its token index and the live token it had
        /// with it, guarded on both the user and the token index being as read.
        #[test]
        fn a_removed_user_takes_its_signup_token_along(
            name in "[a-z][a-z0-9]{0,15}",
            rev in 1i64..i64::MAX,
            live in proptest::option::of((1i64..i64::MAX, "[0-9a-f]{64}")),
        ) {
            let live_signup = live.map(|(index_revision, hash)| LiveSignupToken { index_revision, hash });
            let plan = deleted(
                Kind::User,
                &name,
                rev,
                &Leftovers::User { user: name.parse().unwrap(), live_signup: live_signup.clone() },
                event(),
            );
            let index = keys::signup_token_index(&name);
            prop_assert_eq!(plan.conditions(), vec![
                Condition::Revision(keys::resource(Kind::User, &name), rev),
                match &live_signup {
                    Some(t) => Condition::Revision(index.clone(), t.index_revision),
                    None => Condition::NotExists(index.clone()),
                },
            ]);
            let refusal = Refusal::ResourceChanged { kind: Kind::User, name: name.clone() };
            prop_assert!(plan.guards.iter().all(|g| g.refusal == refusal));
            let mut expected = vec![
                Op::Delete { key: keys::resource(Kind::User, &name) },
                Op::Delete { key: keys::password(&name) },
            ];
            if let Some(t) = &live_signup {
                expected.push(Op::Delete { key: keys::signup_token(&t.hash) });
            }
            expected.push(Op::Delete { key: index });
            prop_assert_eq!(plan.ops, expected);
        }
    }

    #[test]
    fn a_removed_token_takes_its_index_and_a_lock_nothing_else() {
        let plan = deleted(
            Kind::Token,
            "t1",
            3,
            &Leftovers::Token {
                token_hash: Some("abc".into()),
            },
            event(),
        );
        assert_eq!(
            plan.ops,
            vec![
                Op::Delete {
                    key: keys::resource(Kind::Token, "t1")
                },
                Op::Delete {
                    key: keys::join_token_index("abc")
                },
            ]
        );
        let lock = deleted(Kind::Lock, "l1", 9, &Leftovers::None, event());
        assert_eq!(lock.guards.len(), 1);
        assert_eq!(lock.ops.len(), 1);
        assert_eq!(
            lock.guards[0].refusal.to_string(),
            "lock \"l1\" changed meanwhile; try again"
        );
    }
}
