"""The tests do not depend on the state a user leaves in their checkout: tried as a new user would (the README's
commands first, then the tests), `python compare.py ...` had left compare.png at the top and a compare test
failed. Each test now runs in its own clean checkout (conftest.clean_checkout); these check that it is one."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, make_checkout

# what the README's commands leave at the top of a checkout
USER_STATE = ("compare.png", "out", "export", "bench.json")


@pytest.fixture
def dirty_checkout():
    """The user's checkout after the README's commands: compare.png, out/, export/ and bench.json at the top
    (only those not already there are made, and they are removed again)."""
    made = []
    for name in USER_STATE:
        path = os.path.join(ROOT, name)
        if not os.path.exists(path):
            if "." in name:
                open(path, "w").close()
            else:
                os.mkdir(path)
            made.append(path)
    yield
    for path in made:
        os.remove(path) if os.path.isfile(path) else os.rmdir(path)


def test_each_test_runs_in_a_clean_checkout(dirty_checkout, clean_checkout, tmp_path_factory):
    assert os.getcwd() == str(clean_checkout) and os.path.realpath(os.getcwd()) != os.path.realpath(ROOT)
    for folder in (clean_checkout, make_checkout(tmp_path_factory)):
        names = os.listdir(folder)
        assert not [n for n in USER_STATE if n in names], names
        for name in ("train.py", "config", "tests", "nash", "data", "README.md"):  # the README's commands run here
            assert os.path.exists(os.path.join(folder, name)), name
    assert os.path.isfile("config/sft_demo.py") and os.path.isdir("tests/task_data")


@pytest.mark.slow
def test_a_stray_compare_png_fails_no_test(dirty_checkout):
    # the test that failed for the new user, with their compare.png (and out/, export/) in the checkout
    test = "tests/test_compare.py::test_resumed_run_keeps_the_latest_timeline"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
