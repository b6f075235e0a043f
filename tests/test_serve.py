"""`tbps serve`: the JSON API against `tbps search`, bad input and safety, startup errors,
and the page driven in headless Chromium (skipped, with the reason, only where no browser
can be installed)."""

import json
import os

import pytest

from conftest import copy_images
from tbps.cli import main
from tbps.serve.browser import (chrome, explain_on_page, find_chromium, get, search_on_page,
                                start_server, stop, wait)

QUERY = "a woman in a red coat and blue jeans carrying a black backpack"


@pytest.fixture(scope="module")
def served(tiny_run, tiny_synth, tmp_path_factory):
    """`tbps serve` on a folder of 40 images (some in a sub-folder), beside a file outside it
    and a symlink in it that leads out."""
    root = tmp_path_factory.mktemp("serve")
    gallery = copy_images(tiny_synth, root / "gallery", 40, "sub", 4)
    secret = root / "secret.jpg"
    secret.write_bytes((gallery / "001.jpg").read_bytes())
    os.symlink(secret, gallery / "sub" / "leads_out.jpg")
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    proc, url, said = start_server(["--ckpt", str(ckpt), "--gallery", str(gallery),
                                    "--workers", "0"])
    yield url, ckpt, gallery, said
    stop(proc)


def test_startup_says_where_it_listens(served):
    url, _, gallery, said = served
    assert "index: 40 added" in said
    assert f"serving 40 images of {gallery.resolve()} at {url}/" in said
    assert "only this machine can open it" in said


def test_api_ranks_as_tbps_search(served, capsys):
    url, ckpt, gallery, _ = served
    status, body = get(url, "/api/search", q=QUERY, k=7)
    assert status == 200 and body["k"] == 7 and len(body["results"]) == 7
    assert main(["search", "--ckpt", str(ckpt), "--gallery", str(gallery), "--query", QUERY,
                 "--topk", "7", "--json", "--no-update"]) == 0
    cli = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    assert body["results"] == cli
    assert {h["name"] for h in body["results"]} <= {
        p.relative_to(gallery).as_posix() for p in gallery.rglob("*.jpg")}


def test_explain_gives_a_map_per_phrase(served):
    url, _, _, _ = served
    status, found = get(url, "/api/search", q=QUERY, k=3)
    name = found["results"][2]["name"]
    status, body = get(url, "/api/explain", q=QUERY, image=name)
    assert status == 200 and body["image"] == name
    assert [p["phrase"] for p in body["phrases"]] == ["a red coat", "blue jeans",
                                                      "a black backpack"]
    gh, gw = body["grid"]
    for p in body["phrases"]:
        assert len(p["map"]) == gh and all(len(row) == gw for row in p["map"])
        assert p["overlay"].startswith("data:image/png;base64,")
        assert max(max(r) for r in p["map"]) == 1.0


@pytest.mark.parametrize("path, params, status, message", [
    ("/api/search", {"q": ""}, 400, "empty query"),
    ("/api/search", {"q": "   "}, 400, "empty query"),
    ("/api/search", {"q": "a" * 10_000}, 400, "10,000 characters"),
    ("/api/search", {"q": QUERY, "k": 0}, 400, "k must be a whole number from 1 to 100"),
    ("/api/search", {"q": QUERY, "k": 10**9}, 400, "k must be a whole number from 1 to 100"),
    ("/api/search", {"q": QUERY, "k": "ten"}, 400, "k must be a whole number"),
    ("/api/explain", {"q": QUERY, "image": "../../etc/passwd"}, 400, "not a path inside"),
    ("/api/explain", {"q": QUERY, "image": "/etc/passwd"}, 400, "not a path inside"),
    ("/api/explain", {"q": QUERY, "image": "sub/leads_out.jpg"}, 404, "not an image of this"),
    ("/api/explain", {"q": QUERY, "image": "nope.jpg"}, 404, "not an image of this"),
    ("/api/explain", {"q": "", "image": "001.jpg"}, 400, "empty query"),
    ("/api/image", {"name": "../secret.jpg"}, 400, "not a path inside"),
    ("/api/image", {"name": "sub/leads_out.jpg"}, 404, "not an image of this"),
    ("/api/nothing", {}, 404, "Not Found"),
])
def test_bad_input_gets_a_json_error_and_the_server_keeps_serving(served, path, params,
                                                                  status, message):
    url = served[0]
    got, body = get(url, path, **params)
    assert got == status and message in body["error"], body
    assert get(url, "/api/search", q=QUERY, k=2)[0] == 200


def test_a_query_that_is_not_utf8_is_refused(served):
    from urllib.error import HTTPError
    from urllib.request import urlopen

    with pytest.raises(HTTPError) as err:
        urlopen(f"{served[0]}/api/search?q=%FF%FEcoat&k=3", timeout=30)
    assert err.value.code == 400 and "not UTF-8" in json.loads(err.value.read())["error"]


def test_only_indexed_files_inside_the_gallery_are_served(served):
    from urllib.request import urlopen

    url, _, gallery, _ = served
    with urlopen(f"{url}/api/image?name=sub/000.jpg", timeout=30) as r:
        assert r.read() == (gallery / "sub" / "000.jpg").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--ckpt", "missing.ckpt", "--gallery", "."], "checkpoint missing.ckpt not found"),
    (["--gallery", "."], "--gallery without --ckpt"),
])
def test_unusable_inputs_fail_at_start_with_exit_2(args, message, capsys):
    assert main(["serve", *args]) == 2
    assert message in capsys.readouterr().err


def test_a_gallery_that_is_not_a_folder_fails_at_start(tiny_run, tmp_path, capsys):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"
    assert main(["serve", "--ckpt", str(ckpt), "--gallery", str(tmp_path / "no")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_the_page_in_headless_chromium(served, tmp_path):
    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(f"no browser: {found}")
    from selenium.webdriver.common.by import By

    url = served[0]
    driver = chrome()
    try:
        driver.get(url)
        names = search_on_page(driver, QUERY, 8)
        api = [h["name"] for h in get(url, "/api/search", q=QUERY, k=8)[1]["results"]]
        assert names == api
        assert "of 40 images in" in driver.find_element(By.ID, "status").text
        images = driver.find_elements(By.CSS_SELECTOR, "#results img")
        assert all(img.get_property("naturalWidth") > 0 for img in images)
        phrases = explain_on_page(driver, 2)
        assert phrases == ["a red coat", "blue jeans", "a black backpack"]
        assert f"#2 ({names[1]})" in driver.find_element(By.ID, "explain-image").text

        for query, k, message in [("", 5, "empty query"),
                                  ("a" * 10_000, 5, "10,000 characters"),
                                  (QUERY, 0, "from 1 to 100, got '0'"),
                                  (QUERY, 10**9, "from 1 to 100, got '1000000000'")]:
            driver.execute_script("document.getElementById('search-form').noValidate = true")
            driver.execute_script("document.getElementById('query').value = arguments[0]", query)
            driver.execute_script("document.getElementById('k').value = arguments[0]", str(k))
            driver.find_element(By.ID, "go").click()
            error = driver.find_element(By.ID, "error")
            wait(driver, lambda d: message in error.text)
        assert search_on_page(driver, QUERY, 8) == api  # still serving
        assert not driver.find_element(By.ID, "error").is_displayed()
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()


def test_without_arguments_it_serves_the_newest_synthetic_run_over_its_test_images(
        tiny_run, tiny_synth, tmp_path, monkeypatch):
    import shutil
    import subprocess
    from pathlib import Path

    from tbps.serve import prepare

    run = tmp_path / "runs" / "synthetic" / "20260101-000000"
    shutil.copytree(tiny_run, run)
    monkeypatch.chdir(tmp_path)
    service = prepare(None, None, workers=0)
    records = json.loads((tiny_synth / "CUHK-PEDES" / "reid_raw.json").read_text())
    want = {r["file_path"].rsplit("/", 1)[1] for r in records if r["split"] == "test"}
    assert service.root == (run / "serve_gallery").resolve()
    assert {p.name for p in service.root.glob("*.jpg")} == want and len(service.index) == len(want)
    service.index.db.close()

    made = subprocess.run(["make", "-n", "serve", "CKPT=a.ckpt", "GALLERY=photos", "PORT=8123"],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert "tbps serve --ckpt a.ckpt --gallery photos --port 8123" in made.stdout


def test_a_port_in_use_fails_at_start(tiny_run, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ckpt = tiny_run / "checkpoints" / "best.ckpt"
        assert main(["serve", "--ckpt", str(ckpt), "--gallery", ".", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
