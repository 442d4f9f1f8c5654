"""deploy/template.yaml: cfn-lint clean, and in step with what comfyd's code expects of the
resources (queue bands and redrive, table key/index/TTL, setting names, metric names, IAM)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode.decode import decode_str

from comfyd.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "template.yaml"
REFERENCE_POLICY = ROOT / "deploy" / "iam-policy.json"
LINT_REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1"]


def cfn_lint(template: Path, *args: str) -> list[dict[str, Any]]:
    """cfn-lint's findings (its JSON output), run as the CLI is run."""
    script = Path(sys.executable).with_name("cfn-lint")
    proc = subprocess.run([str(script) if script.is_file() else "cfn-lint", "--format", "json", *args, "--", str(template)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().startswith("["), proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    data, problems = decode_str(TEMPLATE.read_text())
    assert not problems, [str(p) for p in problems]
    return data


def resources_of(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def substitute(text: str, values: dict[str, str]) -> str:
    """Fn::Sub's ${Name} substitution with test values (unknown names left as they are)."""
    return re.sub(r"\$\{([^}!]+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def test_cfn_lint_reports_no_errors() -> None:
    matches = cfn_lint(TEMPLATE, "--regions", *LINT_REGIONS)
    errors = [f"{m['Rule']['Id']} line {m['Location']['Start']['LineNumber']}: {m['Message']}"
              for m in matches if m["Level"] == "Error"]
    assert errors == [], "\n".join(errors)


def test_cfn_lint_finds_errors_it_is_given(tmp_path: Path) -> None:
    # The check above must be able to fail: a broken copy of the template is reported.
    broken = tmp_path / "template.yaml"
    broken.write_text(TEMPLATE.read_text().replace("BillingMode: PAY_PER_REQUEST", "BillingMode: FREE_OF_CHARGE"))
    matches = cfn_lint(broken)
    assert any(m["Level"] == "Error" and "FREE_OF_CHARGE" in m["Message"] for m in matches), matches


def test_queues_are_comfyds_priority_bands_with_one_dead_letter_queue(template: dict[str, Any]) -> None:
    from comfyd.backends.aws.init import DLQ_RETENTION_S, QUEUE_RETENTION_S
    from comfyd.backends.aws.sqs_queue import DLQ_SUFFIX, MAX_RECEIVES, queue_names

    queues = resources_of(template, "AWS::SQS::Queue")
    names = {substitute(q["Properties"]["QueueName"]["Fn::Sub"], {"AWS::StackName": "stack"}): logical
             for logical, q in queues.items()}
    base = "stack-jobs"
    assert set(names) == {*queue_names(base), base + DLQ_SUFFIX}
    dlq = names[base + DLQ_SUFFIX]
    assert queues[dlq]["Properties"]["MessageRetentionPeriod"] == DLQ_RETENTION_S
    for name in queue_names(base):
        props = queues[names[name]]["Properties"]
        assert props["RedrivePolicy"] == {"deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]}, "maxReceiveCount": MAX_RECEIVES}
        assert props["MessageRetentionPeriod"] == QUEUE_RETENTION_S
        # With the Lambda consumer on, the visibility timeout must cover the job function's 900 s.
        assert props["VisibilityTimeout"]["Fn::If"][0] == "ConsumeQueueInLambda"
        assert props["VisibilityTimeout"]["Fn::If"][1] > template["Resources"]["JobFunction"]["Properties"]["Timeout"]
    # comfyd is told the base name; it derives the others.
    for function in ("ApiFunction", "JobFunction"):
        env = template["Resources"][function]["Properties"]["Environment"]["Variables"]
        assert env["COMFYD_SQS_QUEUE"] == {"Fn::GetAtt": [names[base], "QueueName"]}


def test_job_table_is_what_the_dynamodb_store_uses(template: dict[str, Any]) -> None:
    from comfyd.backends.aws.dynamodb_store import STATUS_INDEX, TTL_ATTRIBUTE

    props = template["Resources"]["JobsTable"]["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    (index,) = props["GlobalSecondaryIndexes"]
    assert index["IndexName"] == STATUS_INDEX
    assert index["KeySchema"] == [{"AttributeName": "status", "KeyType": "HASH"},
                                  {"AttributeName": "created_at", "KeyType": "RANGE"}]
    assert props["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    assert template["Resources"]["JobsTable"]["DeletionPolicy"] == "Retain"


def test_output_bucket_is_private_encrypted_and_expires(template: dict[str, Any]) -> None:
    props = template["Resources"]["OutputBucket"]["Properties"]
    assert all(props["PublicAccessBlockConfiguration"][k] is True for k in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    rule = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert rule["Fn::If"][0] == "UseKms"
    assert rule["Fn::If"][1]["SSEAlgorithm"] == "aws:kms" and rule["Fn::If"][2]["SSEAlgorithm"] == "AES256"
    expiry = next(r for r in props["LifecycleConfiguration"]["Rules"] if "ExpirationInDays" in r)
    # The lifecycle rule covers exactly what comfyd writes: COMFYD_S3_PREFIX (outputs and job state).
    prefix = template["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]["COMFYD_S3_PREFIX"]
    assert expiry["Prefix"] == f"{prefix}/"
    statements = template["Resources"]["OutputBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statements[0]["Effect"] == "Deny" and statements[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_optional_features_hang_on_their_conditions(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    conditions = {name: r.get("Condition") for name, r in resources.items()}
    assert conditions["Key"] == "CreateKey"
    assert conditions["OutputDistribution"] == conditions["OutputOriginAccessControl"] == "UseCloudFront"
    assert conditions["WebAcl"] == conditions["WebAclAssociation"] == "UseWaf"
    endpoints = {name for name, r in resources.items() if r["Type"] == "AWS::EC2::VPCEndpoint"}
    services = {resources[n]["Properties"]["ServiceName"]["Fn::Sub"].rsplit(".", 1)[-1] for n in endpoints}
    assert {"s3", "dynamodb", "sqs", "monitoring", "sns", "logs", "sts", "api", "dkr"} <= services
    assert all(conditions[n] in ("UseVpcEndpoints", "UseGatewayEndpoints") for n in endpoints)
    alias = resources["ApiFunctionAlias"]["Properties"]["ProvisionedConcurrencyConfig"]
    assert alias["Fn::If"][0] == "HasProvisionedConcurrency"
    origin = resources["OutputDistribution"]["Properties"]["DistributionConfig"]["Origins"][0]
    assert origin["OriginAccessControlId"] == {"Fn::GetAtt": ["OutputOriginAccessControl", "Id"]}
    # The distribution's domain reaches comfyd, which then returns CloudFront URLs.
    env = resources["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert env["COMFYD_CLOUDFRONT_DOMAIN"]["Fn::If"][1] == {"Fn::GetAtt": ["OutputDistribution", "DomainName"]}
    # Every store is encrypted with the key when there is one.
    key = {"Fn::If": ["CreateKey", {"Fn::GetAtt": ["Key", "Arn"]}, {"Ref": "EncryptionKey"}]}
    for name in ("JobQueue", "JobQueueMedium", "JobQueueHigh", "DeadLetterQueue", "EventsTopic", "AlarmTopic"):
        assert resources[name]["Properties"]["KmsMasterKeyId"]["Fn::If"][1] == key, name
    assert resources["JobsTable"]["Properties"]["SSESpecification"]["Fn::If"][1]["KMSMasterKeyId"] == key


def _comfyd_variables(template: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for name in ("ApiFunction", "JobFunction"):
        names |= {k for k in template["Resources"][name]["Properties"]["Environment"]["Variables"] if k.startswith("COMFYD_")}
    user_data = template["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script = user_data["Fn::Base64"]["Fn::Sub"][0]
    names |= set(re.findall(r"\b(COMFYD_[A-Z0-9_]+)=", script))
    return names


def test_every_comfyd_variable_the_template_sets_is_a_setting(template: dict[str, Any]) -> None:
    names = _comfyd_variables(template)
    assert {"COMFYD_STORAGE", "COMFYD_QUEUE", "COMFYD_JOBSTORE", "COMFYD_WARMUP_WORKFLOW"} <= names
    unknown = {n for n in names if n.removeprefix("COMFYD_").lower() not in Settings.model_fields}
    assert unknown == set()


def test_worker_user_data_runs_the_gpu_image_as_workers(template: dict[str, Any], tmp_path: Path) -> None:
    data = template["Resources"]["WorkerLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    script, values = data["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert script.startswith("#!/bin/bash\n")
    assert '--gpus "device=$GPU"' in script and "--no-healthcheck" in script  # one worker per GPU
    assert re.search(r'"\$IMAGE" comfyd worker\n\s*done\n', script)
    assert "-v /opt/comfyd/models:/models:ro" in script  # the image's COMFYD_MODELS_DIR, read-only
    assert data["MetadataOptions"] == {"HttpTokens": "required", "HttpPutResponseHopLimit": 2}
    variables = set(re.findall(r"\$\{([A-Za-z0-9:]+)\}", script))
    provided = set(template["Parameters"]) | set(template["Resources"]) | set(values)
    assert {v for v in variables if not v.startswith("AWS::")} <= provided
    # What the instance runs is valid bash once CloudFormation has substituted the values.
    rendered = substitute(script, {v: f"test-{v.replace(':', '-')}" for v in variables} | {"KmsKeyArn": ""})
    (tmp_path / "user-data.sh").write_text(rendered)
    proc = subprocess.run(["bash", "-n", str(tmp_path / "user-data.sh")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_dashboard_is_json_and_shows_the_metrics_comfyd_emits(template: dict[str, Any]) -> None:
    body, values = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    text = substitute(body, {"AWS::Region": "eu-west-1", **{k: f"value-of-{k}" for k in values},
                             "WorkerGroup": "asg", "ApiFunction": "fn"})
    assert "${" not in text
    dashboard = json.loads(text)
    shown = set(re.findall(r'MetricName=\\?"(\w+)\\?"', text))
    # The CloudWatch backend's names (comfyd/backends/aws/cloudwatch.py) and the job layer's.
    assert {"RequestLatency", "Errors", "NodeExecutionTime", "QueueDepth", "JobsInFlight"} <= shown
    assert len(dashboard["widgets"]) >= 6


def test_alarms_cover_errors_and_queue_age(template: dict[str, Any]) -> None:
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    metric_names = {a["Properties"].get("MetricName") for a in alarms.values()}
    expressions = " ".join(m.get("Expression", "") for a in alarms.values() for m in a["Properties"].get("Metrics", []))
    stats = {m["MetricStat"]["Metric"]["MetricName"] for a in alarms.values() for m in a["Properties"].get("Metrics", [])
             if "MetricStat" in m}
    assert "Errors" in metric_names and "SUM(Errors)" in expressions
    assert "ApproximateAgeOfOldestMessage" in stats
    for name, alarm in alarms.items():
        if name != "JobsWaitingWithoutWorkersAlarm":
            assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}], name


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statements = []
    for statement in document["Statement"]:
        if "Fn::If" in statement:
            statement = statement["Fn::If"][1]
        statements.append(statement)
    return statements


def _actions(statements: list[dict[str, Any]]) -> set[str]:
    actions: set[str] = set()
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        value = statement["Action"]
        actions |= {value} if isinstance(value, str) else set(value)
    return actions


ROLE_POLICIES = {  # the stack's managed policy -> the reference document it must match
    "ComfydApiPolicy": "iam-policy-api.json",
    "ComfydJobFunctionPolicy": "iam-policy.json",
    "ComfydWorkerPolicy": "iam-policy.json",
}


@pytest.mark.parametrize("resource", sorted(ROLE_POLICIES))
def test_runtime_policy_is_least_privilege(template: dict[str, Any], resource: str) -> None:
    document = template["Resources"][resource]["Properties"]["PolicyDocument"]
    statements = _statements(document)
    assert not any("*" in a for a in _actions(statements)), "no wildcard actions"
    for statement in statements:
        if statement["Resource"] == "*":  # only where AWS has no resource-level permission
            assert statement["Action"] == "cloudwatch:PutMetricData"
            assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": Settings().cloudwatch_namespace}}


@pytest.mark.parametrize("resource", sorted(ROLE_POLICIES))
def test_runtime_policy_is_the_reference_policy_for_this_stack(template: dict[str, Any], resource: str) -> None:
    """deploy/iam-policy*.json (the AWS backend's list of the calls each role makes) and the
    stack's policy for that role grant the same actions, statement by statement, on the same
    kinds of resource."""
    reference = _statements(json.loads((REFERENCE_POLICY.parent / ROLE_POLICIES[resource]).read_text()))
    ours = _statements(template["Resources"][resource]["Properties"]["PolicyDocument"])

    def shape(statement: dict[str, Any]) -> tuple[frozenset[str], str]:
        actions = statement["Action"]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        kinds = sorted({_resource_kind(r) for r in resources})
        return frozenset([actions] if isinstance(actions, str) else actions), ",".join(kinds)

    assert sorted(map(shape, ours), key=str) == sorted(map(shape, reference), key=str)


def test_each_role_has_its_own_policy_and_the_api_cannot_consume(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    attached = {name: resources[name]["Properties"]["ManagedPolicyArns"]
                for name in ("ApiFunctionRole", "JobFunctionRole", "WorkerRole")}
    assert attached == {"ApiFunctionRole": [{"Ref": "ComfydApiPolicy"}],
                        "JobFunctionRole": [{"Ref": "ComfydJobFunctionPolicy"}],
                        "WorkerRole": [{"Ref": "ComfydWorkerPolicy"}]}
    functions = {name: resources[name]["Properties"]["Role"] for name in ("ApiFunction", "JobFunction")}
    assert functions == {"ApiFunction": {"Fn::GetAtt": ["ApiFunctionRole", "Arn"]},
                         "JobFunction": {"Fn::GetAtt": ["JobFunctionRole", "Arn"]}}
    api_actions = _actions(_statements(resources["ComfydApiPolicy"]["Properties"]["PolicyDocument"]))
    assert not {"sqs:ReceiveMessage", "sqs:DeleteMessage", "s3:DeleteObject"} & set(api_actions)


def _resource_kind(resource: Any) -> str:
    """What an ARN (or an intrinsic building one) points at: s3-object, dynamodb-index, sqs, *..."""
    text = json.dumps(resource)
    if resource == "*":
        return "*"
    for needle, kind in (("index/", "dynamodb-index"), ("dynamodb", "dynamodb-table"), ("JobsTable", "dynamodb-table"),
                         ("/*", "s3-object"), ("s3", "s3-bucket"), ("OutputBucket", "s3-bucket"), ("sqs", "sqs"),
                         ("Queue", "sqs"), ("sns", "sns"), ("Topic", "sns"), ("kms", "kms"), ("Key", "kms"),
                         ("EncryptionKey", "kms")):
        if needle in text:
            return kind
    return text


def test_rules_refuse_govcloud_with_cloudfront_and_endpoints_without_s3(template: dict[str, Any]) -> None:
    rules = template["Rules"]
    cloudfront = rules["CloudFrontIsAvailable"]
    assert cloudfront["RuleCondition"] == {"Fn::Equals": [{"Ref": "EnableCloudFront"}, "true"]}
    refused = cloudfront["Assertions"][0]["Assert"]["Fn::Not"][0]["Fn::Contains"][0]
    assert {"us-gov-west-1", "us-gov-east-1"} <= set(refused)
    endpoints = rules["VpcEndpointsIncludeS3"]
    assert endpoints["RuleCondition"] == {"Fn::Equals": [{"Ref": "CreateVpcEndpoints"}, "true"]}
    assert endpoints["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::EachMemberEquals": [{"Ref": "PrivateRouteTableIds"}, ""]}]}
    # With the defaults (endpoints on) the S3 gateway endpoint is part of the stack.
    assert template["Parameters"]["CreateVpcEndpoints"]["Default"] == "true"
    assert template["Resources"]["S3Endpoint"]["Properties"]["VpcEndpointType"] == "Gateway"
