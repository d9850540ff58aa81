"""The playground (GET /) in a real browser, and POST /attention over HTTP.

Headless Chromium from the system packages (.ci/run installs it when missing), driven by Playwright's
Python API through its executable_path, loads the page from a real `bge-ref serve` (all-MiniLM-L6-v2
on a free loopback port). The numbers the page shows are read from its elements' data attributes
and checked against encode() in this process and against /attention.

BGE_REF_SCREENSHOTS=docs/images saves the two views' screenshots there (the README's images).
"""
import json
import os
import re
import threading
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pytest
import requests

from bge_ref import inspect as inside_module

from .serving import KEY, RUN, Served, run_error

# Not in the quick tier, though it needs no torch: it needs Playwright and a system Chromium, which
# the quick tier's environment need not have.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TEXTS = ["This is a story about an orange cloud", "This is a story about a llama",
         "This is a story about a hugging emoji", "A llama is a domesticated South American camelid",
         "Clouds turn orange at sunset"]
LONG = "a long input that is cut at the model's 256 tokens " * 40
BODY_LIMIT = 100_000
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def open_srv(tmp_path_factory, minilm_path):
    """No key: a shared link runs as soon as it loads."""
    with Served(tmp_path_factory.mktemp("open"), minilm_path, "--served-model-name", "all-MiniLM-L6-v2") as s:
        yield s


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, minilm_path):
    """A key, a small body limit, and 2 requests in flight at most (the page's Embed makes two)."""
    with Served(tmp_path_factory.mktemp("keyed"), minilm_path, "--api-key", KEY, "--max-body-bytes", str(BODY_LIMIT),
                "--max-concurrent-requests", "2") as s:
        yield s


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    p = context.new_page()
    p.requested = []  # every URL the page asks for: it must never leave the server
    p.on("request", lambda r: p.requested.append(r.url))
    p.set_default_timeout(WAIT_MS)
    try:
        yield p
    finally:
        context.close()


def shared(base, texts, **params) -> str:
    return base + "/?" + urlencode([("text", t) for t in texts] + list(params.items()))


def runs(page) -> int:
    return int(page.get_attribute("#status", "data-runs"))


def wait_run(page, after: int) -> str:
    """Wait until the page finished a call after `after` finished ones; its state: done or error."""
    # a selector, not wait_for_function: the page's Content-Security-Policy forbids the eval that needs
    page.wait_for_selector(f'#status:not([data-runs="{after}"])', state="attached")
    return page.get_attribute("#status", "data-state")


def click_and_wait(page, selector) -> str:
    n = runs(page)
    page.click(selector)
    return wait_run(page, n)


def screenshot(page, name):
    out = os.environ.get("BGE_REF_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / name), full_page=True)


def cosines(page) -> dict:
    cells = page.eval_on_selector_all("#cos [data-cos]", "cs => cs.map(c => [+c.dataset.i, +c.dataset.j, c.dataset.cos])")
    return {(i, j): float(v) for i, j, v in cells}


def test_page_is_self_contained(open_srv):
    r = requests.get(open_srv.base + "/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)  # no CDN, nothing from elsewhere


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_shared_link_embeds(page, open_srv, minilm, pooling):
    texts = TEXTS + [LONG] if pooling == "mean" else TEXTS[:3]
    page.goto(shared(open_srv.base, texts, pooling=pooling))
    assert wait_run(page, 0) == "done", page.inner_text("#error")
    ref = minilm.encode(texts, pooling=pooling, normalize=True).astype(np.float64)
    cos = cosines(page)
    assert sorted(cos) == [(i, j) for i in range(len(texts)) for j in range(len(texts))]
    np.testing.assert_allclose([[cos[i, j] for j in range(len(texts))] for i in range(len(texts))], ref @ ref.T,
                               atol=1e-5, rtol=0)
    # the tokens: pieces and ids as embedded, [CLS] first, [SEP] last, the cut marked
    batch = [e for e in minilm.tokenizer.encode(texts, truncate=True)]
    for i, e in enumerate(batch):
        block = page.locator(f'#tokens .tokens[data-text="{i}"]')
        ids = block.locator(".tok[data-id]").evaluate_all("ts => ts.map(t => +t.dataset.id)")
        pieces = block.locator(".tok[data-id] > span").all_inner_texts()
        assert ids == e.ids and pieces == e.tokens and pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
        assert block.locator(".tok.cut").count() == (texts[i] == LONG)
    assert page.input_value("#pooling") == pooling
    assert page.evaluate("location.search").count("text=") == len(texts)  # the address bar shares this view
    assert all(u.startswith(open_srv.base + "/") for u in page.requested), page.requested
    if pooling == "mean":
        screenshot(page, "playground-embed.png")


def test_inside_view(page, open_srv):
    layer, head, pick = 2, 3, 1
    page.goto(shared(open_srv.base, TEXTS[:3], pooling="mean", view="inside", pick=pick, layer=layer, head=head))
    page.wait_for_selector('#status[data-runs="2"]', state="attached")  # Embed, then Inside
    assert page.get_attribute("#status", "data-state") == "done", page.inner_text("#error")
    assert page.is_visible("#attn") and not page.is_visible("#cos")
    want = open_srv.post("/attention", {"text": TEXTS[pick], "layer": layer}, key=None).json()
    S = len(want["tokens"])

    def check_heatmaps(head):
        cells = page.eval_on_selector_all("#attn [data-p]", "cs => cs.map(c => [+c.dataset.q, +c.dataset.k, +c.dataset.p])")
        got = np.zeros((S, S))
        for q, k, p in cells:
            got[q, k] = p
        assert len(cells) == S * S
        np.testing.assert_array_equal(got, want["attention"][head])
        norms = page.eval_on_selector_all("#norms [data-norm]", "cs => cs.map(c => [+c.dataset.layer, +c.dataset.tok, +c.dataset.norm])")
        assert len(norms) == 7 * S and all(want["hidden_norms"][l][t] == v for l, t, v in norms)
        labels = page.locator("#attn .row-lab").all_inner_texts()
        assert labels == want["tokens"]

    check_heatmaps(head)
    assert page.input_value("#inside-head") == str(head) and page.input_value("#inside-layer") == str(layer)
    screenshot(page, "playground-inside.png")
    n = runs(page)
    page.select_option("#inside-head", "0")
    assert wait_run(page, n) == "done"
    check_heatmaps(0)
    assert "head=0" in page.evaluate("location.search")


def test_inside_long_text(page, open_srv):
    """A long text's map is a canvas (tens of thousands of elements lay out slowly); pointing at a
    cell reads out its probability."""
    page.goto(shared(open_srv.base, [LONG], view="inside", layer=1, head=2))
    page.wait_for_selector('#status[data-runs="2"]', state="attached")
    assert page.get_attribute("#status", "data-state") == "done", page.inner_text("#error")
    want = open_srv.post("/attention", {"text": LONG, "layer": 1}, key=None).json()
    S = len(want["tokens"])
    assert S == 256 and want["truncated"] and page.locator("#attn [data-p]").count() == 0
    size = page.eval_on_selector("#attn canvas", "c => c.width") / S
    assert size == int(size) >= 2
    for q, k in [(0, 0), (5, 200), (255, 17), (128, 128)]:
        page.hover("#attn canvas", position={"x": (k + 0.5) * size, "y": (q + 0.5) * size})
        got = page.eval_on_selector("#attn-readout", "r => [+r.dataset.q, +r.dataset.k, +r.dataset.p]")
        assert got == [q, k, want["attention"][2][q][k]]


def test_errors_keep_the_input(page, keyed):
    page.goto(shared(keyed.base, ["first text", "second"]))
    assert wait_run(page, 0) == "error"  # a shared link, no key yet: the page says it needs one
    error = page.inner_text("#error")
    assert "needs an API key" in error and "missing or wrong API key" in error
    assert page.input_value("#texts") == "first text\nsecond"

    page.fill("#key", "wrong-key")
    assert click_and_wait(page, "#embed") == "error"
    assert "missing or wrong API key" in page.inner_text("#error")
    assert page.input_value("#texts") == "first text\nsecond"

    page.fill("#key", KEY)
    assert click_and_wait(page, "#embed") == "done"
    assert not page.is_visible("#error") and len(cosines(page)) == 4
    page.fill("#texts", "first text\n\nthird")
    assert click_and_wait(page, "#embed") == "error"
    assert "400: inputs.text[1]: empty string" in page.inner_text("#error")
    assert not page.is_visible("#cos-card")  # no earlier result shown as this input's
    assert page.input_value("#texts") == "first text\n\nthird"

    big = "x" * BODY_LIMIT
    page.fill("#texts", big)
    assert click_and_wait(page, "#embed") == "error"
    assert "413: the body has" in page.inner_text("#error") and f"the limit is {BODY_LIMIT}" in page.inner_text("#error")
    assert page.input_value("#texts") == big

    page.fill("#texts", "first text\nsecond")
    assert click_and_wait(page, "#embed") == "done"
    assert not page.is_visible("#error") and len(cosines(page)) == 4
    assert click_and_wait(page, "#tab-inside") == "done"


def test_overloaded(page, keyed):
    """Two long requests fill the server: the page shows the 429 and its Retry-After, /attention is
    refused too (it counts toward --max-concurrent-requests), and the input stays."""
    page.goto(keyed.base + "/")
    page.fill("#key", KEY)
    texts = [f"{i} " + LONG[:900] for i in range(20)]  # just under 256 tokens each: 2 x 5k tokens, seconds of work
    answers = []
    busy = [threading.Thread(target=lambda: answers.append(keyed.post(RUN + "model", {"text": texts}, timeout=300)))
            for _ in range(2)]
    for t in busy:
        t.start()
    try:
        keyed.wait_metric("bge_ref_requests_in_flight", lambda v: v == 2)
        before = page.input_value("#texts")
        assert click_and_wait(page, "#embed") == "error"
        error = page.inner_text("#error")
        assert "429: overloaded: 2 requests in flight" in error and "(Retry-After: 1 s)" in error, error
        assert page.input_value("#texts") == before
        assert "overloaded" in run_error(keyed.post("/attention", {"text": "a", "layer": 0}), 429)
    finally:
        for t in busy:
            t.join(300)
    assert [a.status_code for a in answers] == [200, 200]


# -- POST /attention over HTTP -------------------------------------------------------------------
def test_attention_route(keyed, minilm):
    r = keyed.post("/attention", {"text": "hello world", "layer": 5})
    assert r.status_code == 200
    body = r.json()
    want = inside_module.as_json(inside_module.look_inside(minilm, "hello world", 5))
    assert body == json.loads(json.dumps(want))
    assert body["tokens"] == ["[CLS]", "hello", "world", "[SEP]"] and np.shape(body["attention"]) == (12, 4, 4)


def test_routes_match_the_document(keyed):
    """GET / and POST /attention in GET /openapi.json; real answers validate against its schemas."""
    import jsonschema
    doc = requests.get(keyed.base + "/openapi.json", timeout=30).json()
    assert doc["paths"]["/"]["get"]["security"] == [] and "text/html" in doc["paths"]["/"]["get"]["responses"]["200"]["content"]
    op = doc["paths"]["/attention"]["post"]
    assert sorted(op["responses"]) == ["200", "400", "401", "408", "413", "429", "500", "503"]
    for body, status in [({"text": "hello world", "layer": 0}, 200), ({"text": "a", "layer": 99}, 400)]:
        schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
        jsonschema.validate(keyed.post("/attention", body).json(), {**schema, "components": doc["components"]})


@pytest.mark.parametrize("body, key, status, message", [
    ({"text": "a", "layer": 0}, None, 401, "missing or wrong API key"),
    ({"text": "a", "layer": 0}, "nope", 401, "missing or wrong API key"),
    ({"text": "a", "layer": 6}, KEY, 400, "layer must be an int in [0, 6)"),
    ({"text": "", "layer": 0}, KEY, 400, "text: empty string"),
    ({"text": "a"}, KEY, 400, 'the body must be {"text": str, "layer": int}'),
    (b"{not json", KEY, 400, "the body is not valid JSON"),
    ({"text": "x" * BODY_LIMIT, "layer": 0}, KEY, 413, f"the limit is {BODY_LIMIT}"),
])
def test_attention_errors(keyed, body, key, status, message):
    assert message in run_error(keyed.post("/attention", body, key=key), status)


def test_page_needs_no_key(keyed):
    r = requests.get(keyed.base + "/", timeout=30)  # a browser cannot send the key when it opens a page
    assert r.status_code == 200 and "bge-ref playground" in r.text
    assert keyed.get("/info", key=None).status_code == 401  # what the page calls does need it
