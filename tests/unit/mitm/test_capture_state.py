"""A capture's flow state is built without mitmproxy's copies and typing inspection, and is what
mitmproxy's own `get_state()` gives (so FlowReader, mitmdump -nr and mitmweb read it as before)."""

from __future__ import annotations

import errno
import io
import os
import time

import pytest
from kimiwire.mitm.capture import SYNC_INTERVAL, CaptureFile, connection_state, saved_state, upstream_request_body
from kimiwire.wire.capture.redaction import REDACTED, Redactor
from kimiwire.wire.codecs import tnetstring
from mitmproxy import certs, connection
from mitmproxy.http import HTTPFlow
from mitmproxy.io import FlowReader
from mitmproxy.io import tnetstring as mitmproxy_tnetstring
from mitmproxy.net.server_spec import ServerSpec
from mitmproxy.test import tflow


@pytest.fixture(scope="module")
def certificate() -> certs.Cert:
    _, ca = certs.create_ca("kimiwire test", "kimiwire test CA", 2048)
    return certs.Cert(ca)


def _tls(conn: connection.Connection, certificate: certs.Cert) -> connection.Connection:
    conn.tls = True
    conn.certificate_list = [certificate, certificate]
    conn.alpn_offers = [b"h2", b"http/1.1"]
    conn.cipher_list = ["TLS_AES_128_GCM_SHA256"]
    conn.tls_version = "TLSv1.3"
    conn.error = "reset"
    conn.timestamp_end = 946681300  # an int in a float field: mitmproxy writes it as a float
    return conn


def _flows(certificate: certs.Cert) -> list:
    plain = tflow.tflow(resp=True)
    errored = tflow.tflow(err=True)
    websocket = tflow.tflow(resp=True, ws=True)
    secure = tflow.tflow(resp=True)
    _tls(secure.client_conn, certificate).mitmcert = certificate
    server = _tls(secure.server_conn, certificate)
    server.via = ServerSpec(("https", ("proxy.example", 8443)))
    secure.metadata["kimiwire"] = {"repairs": [{"kind": "x"}], "upstream_request": b'{"api_key": "k"}'}
    secure.metadata["other"] = {"n": 1}
    secure.marked = ":wrench:"
    secure.comment = "kimiwire: x=1"
    return [plain, errored, websocket, secure]


def test_connection_states_are_mitmproxys(certificate: certs.Cert) -> None:
    for flow in _flows(certificate):
        for conn in (flow.client_conn, flow.server_conn):
            mine = connection_state(conn)
            assert mine == conn.get_state() and list(mine) == list(conn.get_state())
            assert tnetstring.dumps(mine) == mitmproxy_tnetstring.dumps(conn.get_state())


def test_saved_state_is_the_flows_state_with_the_capture_parts(certificate: certs.Cert) -> None:
    for flow in _flows(certificate):
        expected = flow.get_state()
        expected["backup"] = None
        client_request = flow.request.get_state()
        client_request["headers"] = ((b"authorization", b"Bearer sk-1"), (b"host", b"h"))
        expected["request"] = {**client_request, "headers": [(b"authorization", REDACTED.encode()), (b"host", b"h")]}
        record = expected["metadata"].get("kimiwire")
        if record:
            record["upstream_request"] = b'{"api_key":"' + REDACTED.encode() + b'"}'
        if flow.response is not None:
            expected["response"]["content"] = b"raw upstream body"
            expected["response"]["headers"] = [(b"set-cookie", REDACTED.encode())]
        state = saved_state(flow, client_request, [(b"set-cookie", b"s=1")], b"raw upstream body", Redactor())
        assert state == expected and list(state) == list(expected)
        assert tnetstring.dumps(state) == mitmproxy_tnetstring.dumps(expected)
        assert client_request["headers"][0] == (b"authorization", b"Bearer sk-1")  # the caller's is not changed


def test_written_flows_read_back(tmp_path: os.PathLike[str], certificate: certs.Cert) -> None:
    flows = _flows(certificate)
    capture = CaptureFile(tmp_path, "c.mitm")
    for flow in flows:
        assert capture.write(saved_state(flow))
    capture.close()
    with open(capture.path, "rb") as f:
        read = list(FlowReader(io.BytesIO(f.read())).stream())
    assert [f.id for f in read] == [f.id for f in flows]
    assert read[3].server_conn.via == ("https", ("proxy.example", 8443))
    assert read[3].client_conn.certificate_list[0] == certificate
    assert read[3].metadata["other"] == {"n": 1}


def test_syncs_are_grouped_and_close_syncs_the_rest(tmp_path, monkeypatch, caplog) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    capture = CaptureFile(tmp_path, "c.mitm")
    flow = tflow.tflow(resp=True)
    started = time.monotonic()
    for _ in range(40):
        assert capture.write(saved_state(flow))
    deadline = time.monotonic() + 5
    while not synced and time.monotonic() < deadline:  # the first write is synced at once
        time.sleep(0.01)
    during = len(synced)
    seconds = time.monotonic() - started
    assert 1 <= during <= 1 + seconds / SYNC_INTERVAL + 1  # not one per flow
    capture.close()
    assert len(synced) > during  # close syncs what the pause left
    with open(capture.path, "rb") as f:
        assert len(list(FlowReader(f).stream())) == 40

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    capture = CaptureFile(tmp_path, "d.mitm")
    assert capture.write(saved_state(flow))
    capture.close()
    assert "cannot sync the capture" in caplog.text and "Input/output error" in (capture.last_error or "")


def test_a_body_sent_as_the_client_sent_it_is_redacted_once_and_alike() -> None:
    flow = tflow.tflow(resp=True)
    body = b'{"messages": [], "api_key": "sk-1"}'
    flow.request.content = body
    flow.metadata["kimiwire"] = {"upstream_request": bytes(bytearray(body))}  # equal, another object
    state = saved_state(flow, flow.request.get_state())
    assert "upstream_request" not in state["metadata"]["kimiwire"]  # stored once: as the request's body
    assert upstream_request_body(HTTPFlow.from_state(state)) == Redactor().json_body(body) != body
    assert flow.metadata["kimiwire"]["upstream_request"] == body  # the flow's own record is not changed
