"""The JSON Schema of a job file: checked in as jobs/schema.json, current, and what every job file follows."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.config import job_schema, load_job, schema_text

JOBS_DIR = Path(__file__).parent.parent / "jobs"
JOBS = sorted(JOBS_DIR.glob("*.yaml"))
SCHEMA_FILE = JOBS_DIR / "schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_checked_in_schema_is_current():
    assert json.loads(SCHEMA_FILE.read_text()) == job_schema(), (
        "jobs/schema.json is stale: python -m pipeline.config --schema --out jobs/schema.json")
    assert SCHEMA_FILE.read_text() == schema_text()


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_job_file_follows_the_schema(path, validator):
    validator.validate(yaml.safe_load(path.read_text()))


def test_a_resolved_job_follows_the_schema(validator):
    validator.validate(load_job(JOBS_DIR / "digits_oat.yaml").to_dict())


@pytest.mark.parametrize("doc,where", [
    ({"train": {"epocs": 3}}, "epocs"),  # an unknown key
    ({"trian": {}}, "trian"),  # an unknown section
    ({"optim": {"schedule": "linear"}}, "linear"),  # not one of a Literal's values
    ({"data": {"dataset": "mnist"}}, "mnist"),  # not a registered data set
    ({"method": {"name": "trades"}}, "trades"),  # not a registered method
    ({"train": {"amp": "yes"}}, "yes"),  # a flag is true or false
    ({"train": {"epochs": "ten"}}, "ten"),
    ({"attack": {"eps": "eight"}}, "eight"),  # a number, or a fraction such as 8/255
])
def test_wrong_files_fail_validation(doc, where, validator):
    with pytest.raises(jsonschema.ValidationError) as e:
        validator.validate(doc)
    assert where in str(e.value)


def test_fractions_validate(validator):
    validator.validate({"attack": {"eps": "8/255", "step_size": "2/255"}, "method": {"lambda_choices": [0, "1/2"]}})


def test_fields_carry_descriptions():
    schema = job_schema()
    sections = [schema, *schema["$defs"].values()]
    missing = [name for s in sections for name, prop in s["properties"].items() if not prop.get("description")]
    assert not missing
