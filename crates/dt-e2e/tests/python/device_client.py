#!/usr/bin/env python3
"""A devtrust client written only from crates/dt-proto/proto/*.proto (docs/api.md).

It proves the gRPC API stands on its own: no Rust, no JSON, only stubs that grpcio-tools
generates at run time. Against a running `devtrust start`, it

  1. trusts the server by its CA pin (the last certificate of the TLS chain must hash to it),
  2. logs in with a signup token (AuthService.Login) for a P-256 key of its own,
  3. switches to mutual TLS with the X.509 certificate it was issued,
  4. registers a device and gets an enrollment token (DeviceTrustService.CreateDevice),
  5. enrolls a software P-256 credential (EnrollDevice: EnrollInit, EnrollChallenge,
     EnrollChallengeResponse, EnrollSuccess), signing with the `cryptography` package,
     and sees the spent token refused (PERMISSION_DENIED),
  6. authenticates the device (AuthenticateDevice) and checks the augmented certificates:
     the X.509 subject carries the device attributes, the SSH certificate the device
     extensions, both for the same key and expiry,
  7. reads the device back (GetDevice) and calls WhoAmI with the augmented certificate.

Usage: device_client.py PROTO_DIR HOST:PORT CA_PIN USER SIGNUP_TOKEN ASSET_TAG
Exits 0 when every check passed; prints what it did.
"""

import atexit
import hashlib
import os
import queue
import shutil
import socket
import ssl
import sys
import tempfile
import time
import uuid

import grpc
import grpc_tools
from grpc_tools import protoc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

# DESIGN.md §5: our arc (a UUID OID) and the device attributes under it.
ARC = "2.25.112976937590999683324659271999942156561"
OID_DEVICE_ID = x509.ObjectIdentifier(ARC + ".3.1")
OID_ASSET_TAG = x509.ObjectIdentifier(ARC + ".3.2")
OID_CREDENTIAL_ID = x509.ObjectIdentifier(ARC + ".3.3")
SSH_DEVICE_EXTENSIONS = (
    b"devtrust-device-id",
    b"devtrust-device-asset-tag",
    b"devtrust-device-credential-id",
)


def step(msg):
    print(f"==> {msg}", flush=True)


def fail(msg):
    print(f"FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def generate_stubs(proto_dir, out_dir):
    """protoc via grpcio-tools, with the well-known types it ships (timestamp.proto)."""
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    protos = sorted(f for f in os.listdir(proto_dir) if f.endswith(".proto"))
    rc = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}",
         f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    )
    check(rc == 0, f"protoc failed on {protos} ({rc})")
    sys.path.insert(0, out_dir)
    return protos


def spki_pin(cert_der):
    cert = x509.load_der_x509_certificate(cert_der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def fetch_pinned_ca(host, port, pin):
    """The server presents [server cert, CA cert]; trust the CA only if its pin matches."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            if hasattr(tls, "get_unverified_chain"):  # Python 3.13+
                chain = tls.get_unverified_chain()
            else:  # 3.10-3.12: the same call, not yet public
                chain = tls._sslobj.get_unverified_chain()
            ders = [
                c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)
                for c in chain
            ]
    check(len(ders) >= 2, f"the server sent {len(ders)} certificate(s), expected its CA too")
    got = spki_pin(ders[-1])
    check(got == pin, f"CA pin mismatch: the server's CA is {got}, expected {pin}")
    return x509.load_der_x509_certificate(ders[-1]).public_bytes(serialization.Encoding.PEM)


def der_to_pem(der):
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def bidi(method, first):
    """Opens a bidirectional stream: returns (send, responses)."""
    q = queue.Queue()
    q.put(first)

    def requests():
        while True:
            m = q.get()
            if m is None:
                return
            yield m

    responses = method(requests(), timeout=30)
    return q.put, responses


def main():
    if len(sys.argv) != 7:
        fail(__doc__)
    proto_dir, addr, pin, user, signup_token, asset_tag = sys.argv[1:]
    host, port = addr.rsplit(":", 1)

    out_dir = tempfile.mkdtemp(prefix="devtrust-pystubs-")
    atexit.register(shutil.rmtree, out_dir, True)
    protos = generate_stubs(proto_dir, out_dir)
    step(f"generated Python stubs from {', '.join(protos)} into {out_dir}")
    import devtrust_pb2 as api
    import devtrust_pb2_grpc as api_grpc
    import devices_pb2 as dev
    import devices_pb2_grpc as dev_grpc
    from google.protobuf.timestamp_pb2 import Timestamp

    # 1. Trust the server by its pin.
    ca_pem = fetch_pinned_ca(host, int(port), pin)
    step(f"server CA matches pin {pin}")
    tls = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(addr, tls) as ch:
        ping = api_grpc.AuthServiceStub(ch).Ping(api.PingRequest(), timeout=10)
        step(f"Ping: cluster {ping.cluster_name!r}, server {ping.server_version}")

        # 2. Login with a signup token, for a key of our own.
        key = ec.generate_private_key(ec.SECP256R1())
        ssh_pub = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        ).decode()
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        login = api_grpc.AuthServiceStub(ch).Login(
            api.LoginRequest(
                username=user,
                signup_token=signup_token,
                new_password="python client password 1",
                ssh_public_key=ssh_pub,
                tls_public_key_der=spki,
            ),
            timeout=10,
        )
    x509_cert = x509.load_der_x509_certificate(login.tls_cert_der)
    check(x509_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki,
        "the login certificate is not for our key")
    step(f"Login: X.509 and SSH certificates for {user!r}, roles {list(login.roles)}")

    # 3. Mutual TLS with the issued certificate from now on.
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )

    def mtls(cert_der):
        return grpc.secure_channel(
            addr,
            grpc.ssl_channel_credentials(
                root_certificates=ca_pem,
                private_key=key_pem,
                certificate_chain=der_to_pem(cert_der),
            ),
        )

    with mtls(login.tls_cert_der) as ch:
        who = api_grpc.AuthServiceStub(ch).WhoAmI(api.WhoAmIRequest(), timeout=10)
        check(who.username == user, f"WhoAmI says {who.username!r}")
        check(not who.device_id, "a fresh login already carries a device")
        step(f"WhoAmI over mTLS: {who.username!r}, no device yet")

        devices = dev_grpc.DeviceTrustServiceStub(ch)

        # 4. Register the device and get a single-use enrollment token.
        created = devices.CreateDevice(
            dev.CreateDeviceRequest(
                device=dev.Device(os_type=dev.OS_TYPE_LINUX, asset_tag=asset_tag),
                create_enroll_token=True,
                enroll_token_ttl_seconds=600,
            ),
            timeout=10,
        )
        device_id = created.device.id
        check(created.device.enroll_status == dev.DEVICE_ENROLL_STATUS_NOT_ENROLLED,
              "a new device must not be enrolled")
        token = created.enroll_token.token
        check(len(token) == 43, "the enrollment token is not 43 characters")
        step(f"CreateDevice: {asset_tag}/Linux is device {device_id}, token issued")

        # 5. Enroll a software P-256 credential.
        device_key = ec.generate_private_key(ec.SECP256R1())
        credential_id = str(uuid.uuid4())

        def collected():
            now = Timestamp()
            now.GetCurrentTime()
            return dev.DeviceCollectedData(
                collect_time=now,
                os_type=dev.OS_TYPE_LINUX,
                serial_number=asset_tag,
                os_version="12",
                os_username=user,
                hostname="python-client",
                serial_source="override",
            )

        init = dev.EnrollInit(
            token=token,
            credential_id=credential_id,
            device_data=collected(),
            p256=dev.P256EnrollPayload(
                public_key_der=device_key.public_key().public_bytes(
                    serialization.Encoding.DER,
                    serialization.PublicFormat.SubjectPublicKeyInfo,
                ),
                storage=dev.P256_KEY_STORAGE_SOFTWARE,
            ),
        )
        send, replies = bidi(devices.EnrollDevice, dev.EnrollDeviceRequest(init=init))
        first = next(replies)
        check(first.WhichOneof("payload") == "challenge", f"expected EnrollChallenge, got {first}")
        challenge = first.challenge.p256.challenge
        check(len(challenge) == 32, f"a {len(challenge)}-byte challenge")
        signature = device_key.sign(challenge, ec.ECDSA(hashes.SHA256()))
        send(dev.EnrollDeviceRequest(challenge_response=dev.EnrollChallengeResponse(
            p256=dev.P256ChallengeResponse(signature_der=signature))))
        second = next(replies)
        send(None)
        check(second.WhichOneof("payload") == "success", f"expected EnrollSuccess, got {second}")
        enrolled = second.success.device
        check(enrolled.id == device_id, "EnrollSuccess names another device")
        check(enrolled.enroll_status == dev.DEVICE_ENROLL_STATUS_ENROLLED, "not enrolled")
        check(enrolled.credential.id == credential_id, "another credential was stored")
        check(enrolled.credential.attestation_type == dev.DEVICE_ATTESTATION_TYPE_SOFTWARE,
              "the credential is not recorded as software")
        step(f"EnrollDevice: enrolled, credential {credential_id} (software)")

        # The token was spent at EnrollInit: a second use is refused with the stable code and
        # the one generic message.
        send, replies = bidi(devices.EnrollDevice, dev.EnrollDeviceRequest(init=init))
        try:
            got = next(replies)
            fail(f"a spent token was accepted: {got}")
        except grpc.RpcError as e:
            send(None)
            check(e.code() == grpc.StatusCode.PERMISSION_DENIED
                  and "invalid device enrollment token" in e.details(),
                  f"a spent token: {e.code()}: {e.details()}")
        step("EnrollDevice with the spent token: PERMISSION_DENIED invalid device enrollment token")

        # 6. Authenticate the device: augmented certificates.
        ainit = dev.AuthenticateInit(
            user_certificates=dev.UserCertificates(
                x509_der=login.tls_cert_der, ssh_authorized_key=login.ssh_cert),
            credential_id=credential_id,
            device_data=collected(),
        )
        send, replies = bidi(devices.AuthenticateDevice,
                             dev.AuthenticateDeviceRequest(init=ainit))
        first = next(replies)
        check(first.WhichOneof("payload") == "challenge", f"expected a challenge, got {first}")
        challenge = first.challenge.p256.challenge
        check(len(challenge) == 32, f"a {len(challenge)}-byte challenge")
        send(dev.AuthenticateDeviceRequest(challenge_response=dev.AuthenticateChallengeResponse(
            p256=dev.P256ChallengeResponse(
                signature_der=device_key.sign(challenge, ec.ECDSA(hashes.SHA256()))))))
        second = next(replies)
        send(None)
        check(second.WhichOneof("payload") == "success",
              f"expected AuthenticateSuccess, got {second}")
        certs = second.success.user_certificates
        step("AuthenticateDevice: augmented certificates received")

        # The X.509 certificate: same key, same expiry, plus the three device attributes.
        aug = x509.load_der_x509_certificate(certs.x509_der)
        check(aug.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == spki,
            "the augmented X.509 certificate is for another key")
        check(aug.not_valid_after_utc == x509_cert.not_valid_after_utc,
              "the augmented X.509 certificate expires at another time")
        attrs = {a.oid: a.value for a in aug.subject}
        for oid, want, name in [(OID_DEVICE_ID, device_id, "device id"),
                                (OID_ASSET_TAG, asset_tag, "asset tag"),
                                (OID_CREDENTIAL_ID, credential_id, "credential id")]:
            check(attrs.get(oid) == want,
                  f"X.509 subject {name} ({oid.dotted_string}) is {attrs.get(oid)!r}, want {want!r}")
        step(f"X.509 subject carries device id, asset tag and credential id: {aug.subject.rfc4514_string()}")

        # The SSH certificate: same key, plus the device extensions.
        ssh = serialization.load_ssh_public_identity(certs.ssh_authorized_key.encode())
        before = serialization.load_ssh_public_identity(login.ssh_cert.encode())
        check(ssh.public_key().public_numbers() == key.public_key().public_numbers(),
              "the augmented SSH certificate is for another key")
        check(ssh.valid_before == before.valid_before,
              "the augmented SSH certificate expires at another time")
        ext = ssh.extensions
        for name in SSH_DEVICE_EXTENSIONS:
            check(name in ext, f"SSH certificate lacks extension {name.decode()}: {sorted(ext)}")
        check(device_id.encode() in ext[b"devtrust-device-id"],
              "devtrust-device-id does not hold the device id")
        step("SSH certificate extensions: " + ", ".join(sorted(e.decode() for e in ext)))

        # 7. The stored record, as the inventory shows it.
        got = devices.GetDevice(dev.DeviceRef(device_id=device_id), timeout=10)
        check(got.enroll_status == dev.DEVICE_ENROLL_STATUS_ENROLLED, "GetDevice: not enrolled")
        check(got.owner == user, f"GetDevice: owner {got.owner!r}")
        check(len(got.collected_data) == 2,
              f"GetDevice: {len(got.collected_data)} collected data records, want 2")
        step(f"GetDevice: enrolled, owner {got.owner!r}, "
             f"{len(got.collected_data)} collected data records, revision {got.revision}")

    with mtls(certs.x509_der) as ch:
        who = api_grpc.AuthServiceStub(ch).WhoAmI(api.WhoAmIRequest(), timeout=10)
        check(who.device_id == device_id, f"WhoAmI with the augmented certificate: {who}")
        step(f"WhoAmI with the augmented certificate: device {who.device_id}")
    print("OK: a Python client enrolled and authenticated a device", flush=True)


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        fail(f"gRPC call failed: {e.code()}: {e.details()}")
