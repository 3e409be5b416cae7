"""The OpenAPI document: every operation described, errors as problem+json with real codes, and
examples that work when sent as they are (what Swagger UI's "Try it out" does)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from fastapi import FastAPI

from app.errors import HTTP_ERRORS, PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, AppError
from app.main import create_app
from app.openapi import PROBLEM_REF, Problem, restore_example_nulls
from tests.factories import pickle_bytes
from tests.support.service import Api, make_settings

METHODS = ("get", "put", "post", "delete", "patch")
PUBLIC = {("get", "/health"), ("get", "/ready"), ("get", "/.well-known/jwks.json")}


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The document as the app serves it (building it touches no database)."""
    data_dir = tmp_path_factory.mktemp("openapi")
    app = create_app(make_settings(data_dir, f"sqlite:///{data_dir / 'x.db'}", data_dir / "ml"))
    return copy.deepcopy(app.openapi())


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, items in spec["paths"].items():
        for method, operation in items.items():
            if method in METHODS:
                yield method, path, operation


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    if "example" in media or media.get("examples"):
        return True
    return bool(resolve(spec, media.get("schema", {})).get("examples"))


def example_of(spec: dict[str, Any], media: dict[str, Any]) -> Any:
    if "example" in media:
        return media["example"]
    if media.get("examples"):
        return next(iter(media["examples"].values()))["value"]
    return resolve(spec, media["schema"])["examples"][0]


def real_codes() -> set[str]:
    codes = {error.code for error in HTTP_ERRORS.values()} | {"validation_error"}
    pending: list[type[AppError]] = [AppError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending += cls.__subclasses__()
    return codes


def form_from_examples(schema: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """What Swagger UI sends for a form: each field's first example (else its default), empty
    values left out; and the file fields it requires the user to pick."""
    fields: dict[str, str] = {}
    files: list[str] = []
    for name, prop in schema["properties"].items():
        if prop.get("format") == "binary":
            if name in schema["required"]:
                files.append(name)
            continue
        value = prop["examples"][0] if prop.get("examples") else prop.get("default")
        if value is not None and value != "":
            fields[name] = str(value)
    return fields, files


class TestEveryOperation:
    def test_has_a_summary_and_a_description(self, spec: dict[str, Any]) -> None:
        missing = [
            (method, path)
            for method, path, op in operations(spec)
            if not op.get("summary") or len(op.get("description", "")) < 20
        ]
        assert not missing
        summaries = [op["summary"] for _, _, op in operations(spec)]
        assert len(set(summaries)) == len(summaries)

    def test_documents_its_errors_as_problem_json(self, spec: dict[str, Any]) -> None:
        for method, path, op in operations(spec):
            errors = {
                status: response
                for status, response in op["responses"].items()
                if status[0] in "45" and (method, path, status) != ("get", "/ready", "503")
            }
            assert errors, (method, path)
            for status, response in errors.items():
                # Problem+json only: the service never answers an error as application/json.
                assert list(response["content"]) == [PROBLEM_CONTENT_TYPE], (method, path, status)
                media = response["content"][PROBLEM_CONTENT_TYPE]
                assert media["schema"] == {"$ref": PROBLEM_REF}, (method, path, status)
                assert media["examples"], (method, path, status)
        assert "Problem" in spec["components"]["schemas"]
        assert "HTTPValidationError" not in spec["components"]["schemas"]

    def test_success_responses_have_examples(self, spec: dict[str, Any]) -> None:
        for method, path, op in operations(spec):
            successes = {s: r for s, r in op["responses"].items() if s.startswith("2")}
            assert successes, (method, path)
            for status, response in successes.items():
                for media in response.get("content", {}).values():
                    assert has_example(spec, media), (method, path, status)

    def test_request_bodies_have_examples(self, spec: dict[str, Any]) -> None:
        bodies = 0
        for method, path, op in operations(spec):
            for media_type, media in op.get("requestBody", {}).get("content", {}).items():
                bodies += 1
                if media_type == "application/json":
                    assert has_example(spec, media), (method, path)
                else:
                    fields, _ = form_from_examples(resolve(spec, media["schema"]))
                    assert fields, (method, path)
        assert bodies >= 6

    def test_examples_match_their_schemas(self, spec: dict[str, Any]) -> None:
        document = restore_example_nulls(copy.deepcopy(spec))
        checked = 0
        for method, path, op in operations(document):
            responses = [(s, r.get("content", {})) for s, r in op["responses"].items()]
            body = op.get("requestBody", {}).get("content", {})
            for status, content in [*responses, ("request", body)]:
                for media_type, media in content.items():
                    if "schema" not in media or not has_example(document, media):
                        continue
                    values = (
                        [e["value"] for e in media["examples"].values()]
                        if media.get("examples")
                        else [example_of(document, media)]
                    )
                    validator = jsonschema_rs.Draft202012Validator(
                        {**media["schema"], "components": document["components"]},
                        validate_formats=True,
                    )
                    for value in values:
                        errors = [e.message for e in validator.iter_errors(value)]
                        assert not errors, (method, path, status, media_type, errors)
                        checked += 1
        assert checked > 100


class TestAuthenticatedOperations:
    def test_every_operation_but_the_probes_needs_a_key(self, spec: dict[str, Any]) -> None:
        unsecured = {(m, p) for m, p, op in operations(spec) if not op.get("security")}
        assert unsecured == PUBLIC

    def test_document_401_403_and_429(self, spec: dict[str, Any]) -> None:
        for method, path, op in operations(spec):
            if (method, path) in PUBLIC:
                continue
            responses = op["responses"]
            assert {"401", "403", "429"} <= set(responses), (method, path)
            assert "Retry-After" in responses["429"]["headers"], (method, path)
            codes = {
                status: {
                    e["value"]["code"]
                    for e in r["content"][PROBLEM_CONTENT_TYPE]["examples"].values()
                }
                for status, r in responses.items()
                if status in ("401", "403", "429")
            }
            assert codes == {
                "401": {"unauthorized"},
                "403": {"forbidden"},
                "429": {"too_many_requests"},
            }, (method, path)

    async def test_the_documented_401_is_what_the_service_answers(self, api: Api) -> None:
        spec = (await api.client.get("/openapi.json")).json()
        for method, path, _ in operations(spec):
            if (method, path) in PUBLIC:
                continue
            concrete = path.replace("{token_id}", "XRAY").replace("{webhook_id}", "w")
            concrete = concrete.replace("{registration_id}", "r").replace("{delivery_id}", "d")
            response = await api.client.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path)
            assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
            assert response.json()["code"] == "unauthorized"


class TestErrorExamples:
    def test_codes_are_real_and_bodies_are_problems(self, spec: dict[str, Any]) -> None:
        codes = real_codes()
        seen: set[str] = set()
        for method, path, op in operations(spec):
            for status, response in op["responses"].items():
                media = response.get("content", {}).get(PROBLEM_CONTENT_TYPE)
                if media is None:
                    continue
                for example in media["examples"].values():
                    body = example["value"]
                    where = (method, path, status, body.get("code"))
                    assert body["code"] in codes, where
                    assert body["status"] == int(status), where
                    assert body["type"] == PROBLEM_TYPE_BASE + body["code"], where
                    assert f"`{body['code']}`" in response["description"], where
                    Problem.model_validate(body)
                    seen.add(body["code"])
        # The contract's register errors are all shown.
        assert {
            "token_not_found",
            "token_not_registrable",
            "registration_in_progress",
            "unsupported_metric",
            "invalid_baseline",
            "invalid_metric_value",
            "benchmark_mismatch",
            "metric_below_baseline",
            "invalid_model_file",
            "invalid_predictions",
            "checksum_mismatch",
            "idempotency_key_reused",
            "validation_error",
            "payload_too_large",
            "mlflow_unavailable",
            "database_unavailable",
        } <= seen

    def test_register_documents_its_codes_under_their_statuses(self, spec: dict[str, Any]) -> None:
        responses = spec["paths"]["/models/{token_id}/register"]["post"]["responses"]

        def codes(status: str) -> set[str]:
            examples = responses[status]["content"][PROBLEM_CONTENT_TYPE]["examples"]
            return {e["value"]["code"] for e in examples.values()}

        assert codes("404") == {"token_not_found"}
        assert codes("409") == {"token_not_registrable", "registration_in_progress"}
        assert {"metric_below_baseline", "benchmark_mismatch", "checksum_mismatch"} <= codes("422")
        assert codes("413") == {"payload_too_large"}
        assert codes("415") == {"unsupported_media_type"}
        assert codes("503") == {
            "mlflow_unavailable",
            "database_unavailable",
            "evaluation_unavailable",
        }
        assert "Retry-After" in responses["503"]["headers"]


class TestRegisterForm:
    def test_swagger_ui_shows_a_file_picker_and_prefilled_fields(
        self, spec: dict[str, Any]
    ) -> None:
        media = spec["paths"]["/models/{token_id}/register"]["post"]["requestBody"]["content"]
        form = media["multipart/form-data"]["schema"]
        properties = form["properties"]
        # Swagger UI renders a file input for a string with format binary.
        assert properties["model_file"]["type"] == "string"
        assert properties["model_file"]["format"] == "binary"
        assert properties["model_file"]["contentMediaType"] == "application/octet-stream"
        assert properties["predictions"]["format"] == "binary"
        fields, files = form_from_examples(form)
        assert fields["metric"] == "auroc"
        assert fields["baseline"] == "0.82"
        assert fields["metric_value"] == "0.86"
        assert "sha256" not in fields and "model_name" not in fields
        assert files == ["model_file"]
        # Sent in property order: the model after the metric fields.
        names = list(properties)
        assert names.index("model_file") == len(names) - 1
        assert names.index("metric") < names.index("model_file")


class TestWorkingExamples:
    """The examples, sent as they are, do what they say (on SQLite and on PostgreSQL)."""

    async def test_token_register_and_deploy_examples_work(self, api: Api) -> None:
        spec = (await api.client.get("/openapi.json")).json()
        headers = api.auth()

        create = spec["paths"]["/tokens"]["post"]["requestBody"]["content"]["application/json"]
        created = await api.client.post("/tokens", json=example_of(spec, create), headers=headers)
        assert created.status_code == 201, created.text
        token = created.json()
        assert token["status"] == "draft"

        operation = spec["paths"]["/models/{token_id}/register"]["post"]
        (path_param,) = [p for p in operation["parameters"] if p["in"] == "path"]
        token_id = next(iter(path_param["examples"].values()))["value"]
        assert token_id.upper() == token["token_id"]
        form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
        fields, files = form_from_examples(form)
        uploads = {
            name: ("model.pkl", pickle_bytes(), "application/octet-stream") for name in files
        }
        registered = await api.client.post(
            f"/models/{token_id}/register", data=fields, files=uploads, headers=headers
        )
        assert registered.status_code == 201, registered.text
        body = registered.json()
        assert body["status"] == "registered"
        assert body["metric"]["name"] == "auroc"
        assert body["metric"]["value"] == 0.86 and body["metric"]["baseline"] == 0.82
        assert registered.headers["Location"] == f"/registrations/{body['registration_id']}"
        # The documented response example has the same shape as the real answer.
        documented = example_of(spec, operation["responses"]["201"]["content"]["application/json"])
        assert set(documented) <= set(body)

        update = spec["paths"]["/tokens/{token_id}"]["patch"]["requestBody"]["content"]
        deployed = await api.client.patch(
            f"/tokens/{token_id}",
            json=example_of(spec, update["application/json"]),
            headers=headers,
        )
        assert deployed.status_code == 200, deployed.text
        assert deployed.json()["status"] == "deployed"

    async def test_webhook_create_example_works(self, api: Api) -> None:
        spec = (await api.client.get("/openapi.json")).json()
        media = spec["paths"]["/webhooks"]["post"]["requestBody"]["content"]["application/json"]
        response = await api.client.post(
            "/webhooks", json=example_of(spec, media), headers=api.auth()
        )
        assert response.status_code == 201, response.text
        assert response.json()["secret"].startswith("whsec_")

    async def test_documented_error_example_matches_a_real_refusal(self, api: Api) -> None:
        spec = (await api.client.get("/openapi.json")).json()
        media = spec["paths"]["/tokens/{token_id}"]["get"]["responses"]["404"]["content"]
        documented = media[PROBLEM_CONTENT_TYPE]["examples"]["token_not_found"]["value"]
        response = await api.client.get("/tokens/XRAY", headers=api.auth())
        assert response.status_code == 404
        real = response.json()
        assert {k: real[k] for k in ("type", "title", "status", "code", "detail")} == {
            k: documented[k] for k in ("type", "title", "status", "code", "detail")
        }


class TestFastApiLimits:
    """The limitations `install_openapi` makes up for; a failure here means one is gone upstream
    and its work-around in app/openapi.py can be removed (its docstring says how)."""

    def test_a_responses_model_is_documented_as_json_only(self) -> None:
        # fastapi/fastapi#3122
        app = FastAPI()

        @app.get("/", responses={404: {"model": Problem}})
        def read() -> dict[str, str]:
            return {}

        content = app.openapi()["paths"]["/"]["get"]["responses"]["404"]["content"]
        assert list(content) == ["application/json"]

    def test_nulls_in_examples_are_dropped(self) -> None:
        # fastapi/fastapi#5559
        app = FastAPI()
        example = {"absent": None, "present": "value"}

        @app.get("/", responses={200: {"content": {"application/json": {"example": example}}}})
        def read() -> dict[str, str]:
            return {}

        served = app.openapi()["paths"]["/"]["get"]["responses"]["200"]["content"]
        assert served["application/json"]["example"] == {"present": "value"}


class TestErrorClassExamples:
    def test_every_error_class_has_an_example_of_its_own(self) -> None:
        pending: list[type[AppError]] = list(AppError.__subclasses__())
        seen: dict[str, type[AppError]] = {}
        while pending:
            cls = pending.pop()
            pending += cls.__subclasses__()
            if cls.__name__ == "StoredProblem":
                continue  # a recorded problem replayed: its detail is whatever was stored
            assert cls.example, f"{cls.__name__} has no example"
            assert cls.example not in seen or seen[cls.example] is cls, (cls, seen[cls.example])
            seen[cls.example] = cls

    def test_one_title_per_status_for_the_http_errors(self) -> None:
        for status, error in HTTP_ERRORS.items():
            assert error.status == status
        titles: dict[int, set[str]] = {}
        pending: list[type[AppError]] = [AppError]
        while pending:
            cls = pending.pop()
            pending += cls.__subclasses__()
            if cls.status == 413:
                titles.setdefault(413, set()).add(cls.title)
        assert titles[413] == {HTTP_ERRORS[413].title}
