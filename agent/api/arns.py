"""ARNs of compilation jobs, spelled as SageMaker spells them.

SageMaker lower-cases the job name in the ARN (names are unique case-insensitively), and the
partition follows the Region (aws, aws-cn, aws-us-gov, ...).
"""
from __future__ import annotations

# Region prefix -> partition; anything else is the commercial partition.
PARTITIONS = (
    ("cn-", "aws-cn"),
    ("us-gov-", "aws-us-gov"),
    ("us-iso-", "aws-iso"),
    ("us-isob-", "aws-iso-b"),
    ("eu-isoe-", "aws-iso-e"),
    ("us-isof-", "aws-iso-f"),
)


def partition(region: str) -> str:
    for prefix, name in PARTITIONS:
        if region.startswith(prefix):
            return name
    return "aws"


def compilation_job_arn(region: str, account: str, name: str) -> str:
    return f"arn:{partition(region)}:sagemaker:{region}:{account}:compilation-job/{name.lower()}"
