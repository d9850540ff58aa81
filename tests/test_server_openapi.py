"""GET /openapi.json: the document spec() computes, covering every route of the app, valid OpenAPI 3.1."""
import jsonschema
import pytest
import requests
from openapi_spec_validator import validate

from bge_ref.server import Server, Settings
from bge_ref.server.openapi import openapi_path, spec

from .serving import KEY, NAMED, NAMES, RUN, Served

pytestmark = pytest.mark.quick  # needs the serve extra and its clients, no torch


@pytest.fixture(scope="module")
def served(tmp_path_factory, minilm_path):
    with Served(tmp_path_factory.mktemp("openapi"), minilm_path, "--api-key", KEY, *NAMED) as s:
        yield s


def test_served_document_is_spec_of_info_and_needs_no_key(served):
    r = requests.get(served.base + "/openapi.json", timeout=30)  # no key
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == spec(served.get("/info").json())
    assert NAMES[1] in r.json()["info"]["description"]


def test_every_route_is_documented(minilm):
    app_routes = {(openapi_path(route.path), method.lower())
                  for _, route in Server(minilm, Settings(served=["m"])).routes for method in route.methods
                  if method != "HEAD"}  # Starlette adds HEAD to every GET
    documented = {(path, method) for path, ops in spec()["paths"].items() for method in ops}
    assert documented == app_routes


@pytest.mark.parametrize("info", [None, {"served_model_names": ["m"], "hidden_size": 384, "max_input_tokens": 256,
                                          "limits": {"max_body_bytes": 10}, "version": "0"}])
def test_the_document_is_valid_openapi_3_1(info):
    doc = spec(info)
    validate(doc)  # raises on an invalid document
    assert doc["openapi"] == "3.1.0"
    ops = [op for path in doc["paths"].values() for op in path.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    assert doc["paths"]["/health"]["get"]["security"] == [] and "security" not in doc["paths"]["/info"]["get"]
    run = doc["paths"]["/client/v4/accounts/{account_id}/ai/run/{model}"]["post"]
    assert run["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/RunError")
    assert sorted(run["responses"]) == ["200", "400", "401", "404", "408", "413", "429", "500", "503"]


def test_real_answers_match_the_document(served):
    """The schemas are the answers' own: real answers and errors of each kind validate against them."""
    doc = spec(served.get("/info").json())

    def check(r, path, method="get", status=200):
        op = doc["paths"][path][method]
        assert r.status_code == status, r.text
        schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
        jsonschema.validate(r.json(), {**schema, "components": doc["components"]})
    run_path, account = "/client/v4/accounts/{account_id}/ai/run/{model}", "/client/v4/accounts/{account_id}/ai"
    check(served.post(RUN + NAMES[0], {"text": ["a", "b"], "pooling": "cls"}), run_path, "post")
    check(served.post(RUN + NAMES[0], {"requests": [{"text": "a"}, {"text": ["b"]}]}), run_path, "post")
    check(served.post(RUN + NAMES[0], {"text": []}), run_path, "post", 400)
    check(served.post(RUN + NAMES[0], {"text": "a"}, key=None), run_path, "post", 401)
    for body in ({"input": ["a", "b"]}, {"input": [[7592, 2088]], "encoding_format": "base64"}):
        check(served.post("/v1/embeddings", body), "/v1/embeddings", "post")
    check(served.post("/client/v4/accounts/x/ai/v1/embeddings", {"input": "a", "model": "gpt"}),
          account + "/v1/embeddings", "post", 404)
    check(served.get("/v1/models"), "/v1/models")
    check(served.get("/v1/models/" + NAMES[1]), "/v1/models/{model}")
    check(served.get("/v1/models/gpt"), "/v1/models/{model}", status=404)
    check(served.get("/info"), "/info")
    check(served.get("/health", key=None), "/health")
    check(served.post("/tokenize", {"text": ["hello", "world"]}), "/tokenize", "post")
