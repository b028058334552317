"""A gunicorn entry point with the fake engine (``gunicorn tests.gunicorn_app:app``) for process-level
fault tests: each worker builds the app like ``backend._wsgi`` does, from the environment."""
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from backend.http.app import create_app
from backend.config import Settings
from backend.ops.logs import setup_logging
from backend.predict.predictor import Predictor
from tests.backend_fixtures import FakeEngine

setup_logging()
app = create_app(Settings.from_env(), Predictor(FakeEngine()))


@app.route("/_test/closing")
def closing():  # an answer that asks to close its connection (as a busy 503 does), for test_connection_deadlines
    return "bye", 200, {"Connection": "close"}
