//! Join tokens' writes: `dtctl tokens add` stores the token and its hash index (a bot's
//! token is written the same way, with its user: [`super::bots::bot_added`]).

use dt_store::{Condition, Op};
use dt_types::Kind;
use dt_types::audit::AuditEvent;
use dt_types::resource::{Resource, TokenSpec};

use super::{Guard, Refusal, WritePlan};
use crate::keys;

/// A fresh join token's guard and writes: the token (expiring with it) and its hash index,
/// only if the token's name is free (else a collision).
pub(super) fn token_stored(
    token: &Resource<TokenSpec>,
) -> Result<(Guard<Refusal>, Vec<Op>), serde_json::Error> {
    let name = token.metadata.name.clone();
    let expires = token.metadata.expires;
    let key = keys::resource(Kind::Token, &name);
    Ok((
        Guard {
            condition: Condition::NotExists(key.clone()),
            refusal: Refusal::TokenCollision,
        },
        vec![
            Op::Put {
                key,
                value: serde_json::to_vec(token)?,
                expires,
            },
            Op::Put {
                key: keys::join_token_index(&token.spec.token_hash),
                value: name.into_bytes(),
                expires,
            },
        ],
    ))
}

/// A join token created (for a node, an access point, an MDM service or an existing bot):
/// the token and its index with the event, or nothing if the name is taken.
pub fn join_token_created(
    token: &Resource<TokenSpec>,
    event: AuditEvent,
) -> Result<WritePlan<Refusal>, serde_json::Error> {
    let (guard, ops) = token_stored(token)?;
    Ok(WritePlan {
        guards: vec![guard],
        ops,
        events: vec![event],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dt_store::StoreError;
    use dt_types::audit::EventType;
    use dt_types::resource::TokenRole;
    use time::OffsetDateTime;

    use crate::plan::PlanError;

    fn token(role: TokenRole) -> Resource<TokenSpec> {
        let mut t: Resource<TokenSpec> = Resource::new(
            "0123456789abcdef".to_string(),
            TokenSpec {
                roles: vec![role],
                bot_name: None,
                token_hash: "0123456789abcdef00".into(),
            },
        );
        t.metadata.expires = Some(OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap());
        t
    }

    #[test]
    fn a_join_token_is_the_token_and_its_index_expiring_with_it() {
        let t = token(TokenRole::Node);
        let event = AuditEvent::new(EventType::JoinTokenCreate, true, OffsetDateTime::UNIX_EPOCH);
        let plan = join_token_created(&t, event.clone()).unwrap();
        let key = keys::resource(Kind::Token, "0123456789abcdef");
        assert_eq!(plan.conditions(), vec![Condition::NotExists(key.clone())]);
        assert_eq!(
            plan.ops,
            vec![
                Op::Put {
                    key,
                    value: serde_json::to_vec(&t).unwrap(),
                    expires: t.metadata.expires,
                },
                Op::Put {
                    key: keys::join_token_index("0123456789abcdef00"),
                    value: b"0123456789abcdef".to_vec(),
                    expires: t.metadata.expires,
                },
            ]
        );
        assert_eq!(plan.events, vec![event]);
        assert!(matches!(plan.outcome(Ok(9i64)), Ok(9)));
    }

    #[test]
    fn a_taken_token_name_is_a_collision_to_retry() {
        let plan = join_token_created(
            &token(TokenRole::Db),
            AuditEvent::new(EventType::JoinTokenCreate, true, OffsetDateTime::UNIX_EPOCH),
        )
        .unwrap();
        let taken = plan.outcome::<i64>(Err(StoreError::ConditionFailed {
            index: 0,
            key: String::new(),
        }));
        let Err(PlanError::Refused(r)) = taken else {
            panic!("not refused: {taken:?}");
        };
        assert_eq!(r, Refusal::TokenCollision);
        assert_eq!(r.to_string(), "token collision; try again");
        assert_eq!(r.code(), crate::error::ErrorCode::Conflict);
    }
}
