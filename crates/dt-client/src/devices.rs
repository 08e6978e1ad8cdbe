//! Client drivers of the device ceremonies: the I/O around `dt-ceremony`'s client halves.

use dt_ceremony::authn::client as authn;
use dt_ceremony::enroll::client as enroll;
use dt_ceremony::messages::{
    AuthenticateInit, AuthenticateRequest, AuthenticateResponse, DeviceConfirmationToken,
    DeviceWebToken, EnrollPayload, EnrollRequest, EnrollResponse, UserCertificates,
};
use dt_ceremony::proof::{Proof, ProofRequest, ProverError};
use dt_ceremony::token::EnrollToken;
use dt_proto::v1 as pb;
use dt_proto::v1::device_trust_service_client::DeviceTrustServiceClient;
use dt_types::Device;
use dt_types::device::{AttestationType, DeviceCollectedData};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::connect::ClientError;

/// Encodes a request of the client half. Only the server's replies can fail to convert.
fn msg<'a, R: 'a, P: From<&'a R>>(v: &'a R) -> Result<P, ClientError> {
    Ok(P::from(v))
}

/// The next server message, converted (and checked) by dt-proto.
async fn recv<P, T>(inbound: &mut tonic::Streaming<P>, what: &str) -> Result<T, ClientError>
where
    T: TryFrom<P, Error = dt_proto::ProtoError>,
{
    let m = inbound
        .message()
        .await
        .map_err(ClientError::from_status)?
        // A server that refuses says so with a status; a stream that just ends means the
        // connection went away (e.g. the server was stopped), so the ceremony may be rerun.
        .ok_or_else(|| closed(&format!("before sending {what}")))?;
    T::try_from(m).map_err(|e| ClientError::Api(format!("the server sent a malformed {what}: {e}")))
}

/// The connection ended mid-ceremony: a transport failure ([`ClientError::is_transport`]).
fn closed(when: &str) -> ClientError {
    ClientError::Unreachable {
        addr: String::new(),
        reason: format!("the connection closed during the ceremony, {when}"),
    }
}

fn ceremony_err(e: dt_ceremony::error::ClientError) -> ClientError {
    ClientError::Api(e.to_string())
}

/// Run the enrollment ceremony. Returns the enrolled device record.
pub async fn enroll(
    channel: Channel,
    token: EnrollToken,
    credential_id: String,
    device_data: DeviceCollectedData,
    payload: EnrollPayload,
    prover: impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError>,
) -> Result<Device, ClientError> {
    let (state, init) = enroll::start(token, credential_id, device_data, payload);
    let (tx, rx) = mpsc::channel(4);
    tx.send(msg::<_, pb::EnrollDeviceRequest>(&EnrollRequest::Init(
        Box::new(init),
    ))?)
    .await
    .map_err(|_| ClientError::Api("internal: request channel closed".into()))?;
    let mut client = DeviceTrustServiceClient::new(channel);
    let mut inbound = client
        .enroll_device(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(ClientError::from_status)?
        .into_inner();
    let challenge = match recv::<_, EnrollResponse>(&mut inbound, "EnrollChallenge").await? {
        EnrollResponse::Challenge(c) => c,
        EnrollResponse::Success(_) => {
            return Err(ClientError::Api(
                "the server skipped the challenge; refusing its answer".into(),
            ));
        }
    };
    let (state, response) = state.handle(challenge, prover).map_err(ceremony_err)?;
    tx.send(msg(&EnrollRequest::ChallengeResponse(response))?)
        .await
        .map_err(|_| closed("before the challenge response was sent"))?;
    let success = match recv::<_, EnrollResponse>(&mut inbound, "EnrollSuccess").await? {
        EnrollResponse::Success(s) => s,
        EnrollResponse::Challenge(_) => {
            return Err(ClientError::Api(
                "the server sent a second challenge".into(),
            ));
        }
    };
    state.handle(*success).map_err(ceremony_err)
}

/// Run the authentication ceremony over an mTLS channel. Returns the augmented certificates.
pub async fn authenticate(
    channel: Channel,
    certificates: UserCertificates,
    credential_id: String,
    attestation: AttestationType,
    device_data: DeviceCollectedData,
    prover: impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError>,
) -> Result<UserCertificates, ClientError> {
    let started = authn::start(certificates, credential_id, attestation, device_data)
        .map_err(ceremony_err)?;
    match run_authenticate(channel, started, prover).await? {
        (state, AuthenticateResponse::Success(s)) => state.handle(s).map_err(ceremony_err),
        (state, AuthenticateResponse::WebConfirmation(c)) => {
            // Refused by the state machine (not asked for); the error says so.
            state.handle_web(c).map_err(ceremony_err)?;
            Err(ClientError::Api(
                "the server answered a device web confirmation".into(),
            ))
        }
        (_, AuthenticateResponse::Challenge(_)) => Err(ClientError::Api(
            "the server sent a second challenge".into(),
        )),
    }
}

/// Device web authentication (`dtsh device web-auth`): the same ceremony with the web
/// login's token; returns the confirmation token the browser presents.
pub async fn authenticate_web(
    channel: Channel,
    certificates: UserCertificates,
    credential_id: String,
    attestation: AttestationType,
    device_data: DeviceCollectedData,
    web_token: DeviceWebToken,
    prover: impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError>,
) -> Result<DeviceConfirmationToken, ClientError> {
    let started = authn::start_web(
        certificates,
        credential_id,
        attestation,
        device_data,
        web_token,
    )
    .map_err(ceremony_err)?;
    match run_authenticate(channel, started, prover).await? {
        (state, AuthenticateResponse::WebConfirmation(c)) => {
            state.handle_web(c).map_err(ceremony_err)
        }
        (state, AuthenticateResponse::Success(s)) => {
            state.handle(s).map_err(ceremony_err)?;
            Err(ClientError::Api(
                "the server answered certificates to a device web authentication".into(),
            ))
        }
        (_, AuthenticateResponse::Challenge(_)) => Err(ClientError::Api(
            "the server sent a second challenge".into(),
        )),
    }
}

/// The stream of one authentication ceremony up to the server's last answer.
async fn run_authenticate(
    channel: Channel,
    (state, init): (authn::ExpectChallenge, AuthenticateInit),
    prover: impl FnOnce(ProofRequest<'_>) -> Result<Proof, ProverError>,
) -> Result<(authn::ExpectSuccess, AuthenticateResponse), ClientError> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(msg::<_, pb::AuthenticateDeviceRequest>(
        &AuthenticateRequest::Init(Box::new(init)),
    )?)
    .await
    .map_err(|_| ClientError::Api("internal: request channel closed".into()))?;
    let mut client = DeviceTrustServiceClient::new(channel);
    let mut inbound = client
        .authenticate_device(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(ClientError::from_status)?
        .into_inner();
    let challenge =
        match recv::<_, AuthenticateResponse>(&mut inbound, "AuthenticateChallenge").await? {
            AuthenticateResponse::Challenge(c) => c,
            AuthenticateResponse::Success(_) | AuthenticateResponse::WebConfirmation(_) => {
                return Err(ClientError::Api(
                    "the server skipped the challenge; refusing its answer".into(),
                ));
            }
        };
    let (state, response) = state.handle(challenge, prover).map_err(ceremony_err)?;
    tx.send(msg(&AuthenticateRequest::ChallengeResponse(response))?)
        .await
        .map_err(|_| closed("before the challenge response was sent"))?;
    let last = recv::<_, AuthenticateResponse>(&mut inbound, "AuthenticateSuccess").await?;
    Ok((state, last))
}
