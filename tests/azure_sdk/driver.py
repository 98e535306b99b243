"""Drives Microsoft's azure-iot-device 2.x SDK for the tests; runs in the SDK's own venv (.venv-azure).

    driver.py HUB_HOSTNAME DEVICE_ID CERT KEY ROOT_CA [--answer STATUS]

Connects through the gateway at 127.0.0.1 (the SDK always dials port 8883), then reads JSON commands
from stdin, one a line, and writes JSON lines to stdout:
  {"op": "get_twin"}                 -> {"op": "get_twin", "twin": {...}} or {"op": ..., "error": "..."}
  {"op": "patch", "patch": {...}}    -> {"op": "patch", "ok": true} or {"op": ..., "error": "..."}
  {"op": "send", "payload": "..."}   -> {"op": "send", "ok": true}
  {"op": "quit"}
and, as they arrive: {"event": "desired", "patch": {...}} and {"event": "method", "name", "payload"}
(a method is answered with status --answer and {"echo": payload, "method": name}).
This file must not import anything from the project: the SDK's venv does not have it.
"""

import json
import sys
import threading

from azure.iot.device import X509, IoTHubDeviceClient, Message, MethodResponse

OPERATION_TIMEOUT = 30

_out = threading.Lock()


def emit(obj):
    with _out:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def main():
    hub, device_id, cert, key, root = sys.argv[1:6]
    answer = int(sys.argv[7]) if len(sys.argv) > 7 and sys.argv[6] == "--answer" else 200
    with open(root) as f:
        trust = f.read()
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=cert, key_file=key), hostname=hub, device_id=device_id,
        server_verification_cert=trust, gateway_hostname="127.0.0.1", connection_retry=False,
    )

    def on_desired(patch):
        emit({"event": "desired", "patch": patch})

    def on_method(request):
        emit({"event": "method", "name": request.name, "payload": request.payload})
        response = MethodResponse.create_from_method_request(
            request, answer, {"echo": request.payload, "method": request.name})
        client.send_method_response(response)

    client.on_twin_desired_properties_patch_received = on_desired
    client.on_method_request_received = on_method
    try:
        client.connect()
    except Exception as exc:
        emit({"op": "connect", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"op": "connect", "ok": True})
    for line in sys.stdin:
        command = json.loads(line)
        op = command["op"]
        if op == "quit":
            break
        try:
            if op == "get_twin":
                emit({"op": op, "twin": client.get_twin()})
            elif op == "patch":
                client.patch_twin_reported_properties(command["patch"])
                emit({"op": op, "ok": True})
            elif op == "send":
                client.send_message(Message(command["payload"]))
                emit({"op": op, "ok": True})
        except Exception as exc:
            emit({"op": op, "error": f"{type(exc).__name__}: {exc}"})
    client.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
