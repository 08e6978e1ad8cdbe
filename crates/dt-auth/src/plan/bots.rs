//! Bots' writes: `dtctl bots add` stores the bot user and its join token together.

use dt_store::{Condition, Op};
use dt_types::audit::AuditEvent;
use dt_types::resource::{Resource, TokenSpec};
use dt_types::{Kind, User};

use super::{Guard, Refusal, WritePlan};
use crate::keys;

/// A bot added: the bot user, its join token (expiring with the token) and the token's
/// hash index, only if the user name is free (else "already exists") and the token's name
/// is (else a collision).
pub fn bot_added(
    user: &User,
    token: &Resource<TokenSpec>,
    event: AuditEvent,
) -> Result<WritePlan<Refusal>, serde_json::Error> {
    let name = user.metadata.name.clone();
    let user_key = keys::resource(Kind::User, &name);
    let (token_guard, token_ops) = super::tokens::token_stored(token)?;
    let mut ops = vec![Op::Put {
        key: user_key.clone(),
        value: serde_json::to_vec(user)?,
        expires: None,
    }];
    ops.extend(token_ops);
    Ok(WritePlan {
        guards: vec![
            Guard {
                condition: Condition::NotExists(user_key),
                refusal: Refusal::BotNameTaken { name },
            },
            token_guard,
        ],
        ops,
        events: vec![event],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_store::StoreError;
    use dt_types::audit::EventType;
    use dt_types::resource::{TokenRole, Traits, UserSpec};
    use time::OffsetDateTime;

    use crate::plan::PlanError;

    #[test]
    fn a_bot_is_its_user_its_token_and_the_index_or_nothing() {
        let user: User = Resource::new(
            "ci".to_string(),
            UserSpec {
                roles: vec!["access".into()],
                traits: Traits::default(),
                created_by: None,
                created_at: None,
                bot: true,
            },
        );
        let expires = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
        let mut token: Resource<TokenSpec> = Resource::new(
            "0123456789abcdef".to_string(),
            TokenSpec {
                roles: vec![TokenRole::Bot],
                bot_name: Some("ci".into()),
                token_hash: "0123456789abcdef00".into(),
            },
        );
        token.metadata.expires = Some(expires);
        let event = AuditEvent::new(EventType::UserCreate, true, OffsetDateTime::UNIX_EPOCH);
        let plan = bot_added(&user, &token, event).unwrap();
        assert_eq!(
            plan.conditions(),
            vec![
                Condition::NotExists(keys::resource(Kind::User, "ci")),
                Condition::NotExists(keys::resource(Kind::Token, "0123456789abcdef")),
            ]
        );
        let expiries: Vec<_> = plan
            .ops
            .iter()
            .map(|o| match o {
                Op::Put { key, expires, .. } => (key.clone(), *expires),
                other => panic!("a bot only puts: {other:?}"),
            })
            .collect();
        assert_eq!(
            expiries,
            vec![
                (keys::resource(Kind::User, "ci"), None),
                (
                    keys::resource(Kind::Token, "0123456789abcdef"),
                    Some(expires)
                ),
                (keys::join_token_index("0123456789abcdef00"), Some(expires)),
            ]
        );
        // The first guard is the name, the second the token: by name, not by index.
        let taken = plan.outcome::<i64>(Err(StoreError::ConditionFailed {
            index: 0,
            key: String::new(),
        }));
        let Err(PlanError::Refused(r)) = taken else {
            panic!("not refused: {taken:?}");
        };
        assert_eq!(
            r.to_string(),
            "user \"ci\" already exists; pick another bot name"
        );
        assert_eq!(r.code(), crate::error::ErrorCode::AlreadyExists);
        let collided = plan.outcome::<i64>(Err(StoreError::ConditionFailed {
            index: 1,
            key: String::new(),
        }));
        assert!(matches!(
            collided,
            Err(PlanError::Refused(Refusal::TokenCollision))
        ));
    }
}
