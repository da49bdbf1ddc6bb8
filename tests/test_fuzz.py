"""Generated bad input (tests/fuzzing.py), the fast profile: every generated invalid invocation of `oat` is refused
with exit 2 and one error line naming what is wrong, before any training and without writing anything; every bad
request to the served model gets HTTP 400 and the next good one is answered. The deep profile (thousands of cases)
is `python -m benchmarks.fuzz` (benchmarks/results/fuzz.md); the cases it or a user found are the examples here."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings

from tests import fuzzing
from tests.fuzzing import PATH_CASES, Case, Sandbox, check_rest_case, run_case

FAST = settings(max_examples=15, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    return Sandbox(tmp_path_factory.mktemp("fuzz"))


@FAST
@given(case=fuzzing.job_cases())
@example(case=Case("job/empty/--set", ["train", "{job}", "--out", "{sandbox}/out", "--set", "method.lambda_choices=[]"],
                   ["method.lambda_choices"], fuzzing.yaml.safe_dump(fuzzing.BASE_JOB)))  # was a ZeroDivisionError
@example(case=Case("job/eps", ["train", "{job}", "--out", "{sandbox}/out", "--set", "attack.eps=3"],
                   ["attack.eps"], fuzzing.yaml.safe_dump(fuzzing.BASE_JOB)))  # was accepted, trained 31 s
def test_a_broken_job_is_refused_before_training(box, case):
    run_case(box, case)


@FAST
@given(case=fuzzing.option_cases())
def test_a_bad_option_value_is_refused(box, case):
    run_case(box, case)


@pytest.mark.parametrize("kind,argv,name", PATH_CASES, ids=[f"{k}:{' '.join(a[:2])}" for k, a, _ in PATH_CASES])
def test_a_path_of_the_wrong_kind_is_refused(box, kind, argv, name):
    run_case(box, Case(kind, argv, [name]))


@FAST
@given(case=fuzzing.uri_cases())
@example(case=Case("mlflow-scheme", ["train", "{job}", "--out", "{sandbox}/out", "--mlflow", "ftp://x/y"],
                   ["--mlflow"]))  # was UnsupportedModelRegistryStoreURIException, exit 1
@example(case=Case("ray-unreachable", ["run", "{job}", "--address", "127.0.0.1:1"], ["127.0.0.1:1"],
                   env={"OAT_RAY_CONNECT_TIMEOUT_S": "2"}))  # hung for more than 400 s
@example(case=Case("mlflow-unreachable", ["train", "{job}", "--out", "{sandbox}/out", "--mlflow", "http://127.0.0.1:9"],
                   ["127.0.0.1:9"]))  # found by the harness: refused, but --out was created first
def test_a_bad_uri_or_an_unreachable_service_is_refused(box, case):
    run_case(box, case)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return fuzzing.build_served_model(tmp_path_factory.mktemp("served"))


@FAST
@given(req=fuzzing.bad_requests())
@example(req=("nan", '{"inputs": [[[[NaN, 0, 0, 0, 0, 0, 0, 0]' + ', [0, 0, 0, 0, 0, 0, 0, 0]' * 7 + ']]], '
                     '"params": {"lam": 0.2}}'))  # was 200 with NaN probabilities
@example(req=("range", '{"inputs": [[[' + ', '.join(['[255, 0, 0, 0, 0, 0, 0, 0]'] * 8) + ']]], '
                       '"params": {"lam": 0.2}}'))  # 0-255 pixels: was 200
@example(req=("lam-missing", fuzzing.json.dumps({"inputs": fuzzing.GOOD_IMAGES})))  # was 200 at the first λ
def test_a_bad_request_to_the_served_model_gets_400_and_the_server_keeps_serving(served, req):
    check_rest_case(served, *req)
