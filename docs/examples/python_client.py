"""Register a model for a new token from Python, then read what the service recorded.

Run with the service up (`make run`): `.venv/bin/python docs/examples/python_client.py TOKEN_ID`.
The client finds the service and key as the CLI does (HOKUSAI_API_URL, HOKUSAI_API_KEY, or the
development key of a service on this machine).
"""

import pickle
import sys
import tempfile
from pathlib import Path

from hokusai_client import ApiError, HokusaiClient, NotFound

token_id = sys.argv[1] if len(sys.argv) > 1 else "PY-EXAMPLE"

with HokusaiClient() as client, tempfile.TemporaryDirectory() as scratch:
    try:
        token = client.get_token(token_id)
    except NotFound:
        token = client.create_token(token_id, name="From Python", metric="auroc", baseline=0.82)
    print(f"token {token['token_id']} is {token['status']}")

    model = Path(scratch) / "model.pkl"
    model.write_bytes(pickle.dumps({"weights": [0.1, 0.2]}))
    try:
        registration = client.register_model(
            token_id, model, metric="auroc", baseline=0.82, metric_value=0.86
        )
    except ApiError as e:  # a refusal: e.code is the problem's stable code
        sys.exit(f"refused: {e.code}: {e.detail}")
    print(f"registered {registration['model_name']} version {registration['model_version']}")
    print(f"sha256 {registration['artifact']['sha256']}")

    page = client.list_events(token_id=token_id, event_type="model_registered")
    for event in page["events"]:
        print(f"event {event['sequence']} {event['event_type']} {event['event_id']}")
