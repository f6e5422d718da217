"""obstore vs boto3 as the S3 client, against the real MinIO on loopback (``python -m bench.s3_clients``).

The workload is what a repository does: 32 MiB pack puts and gets, and small-object (4 KiB index,
lease, snapshot) puts and gets, sequential and from a thread pool. Reported per client and
workload: wall time, throughput and the client process's CPU seconds (all threads; MinIO's own CPU
is not counted). Both clients use their defaults otherwise (boto3 adds its default checksums;
obstore sends none). Nothing is asserted: numbers are for choosing, never for tests.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import obstore
from botocore.config import Config
from obstore.store import S3Store

from devenv.s3server import LocalS3Server, S3Endpoint

MIB = 1024 * 1024


@dataclass(frozen=True)
class Client:
    name: str
    put: Callable[[str, bytes], None]
    get: Callable[[str], bytes | memoryview]


def obstore_client(endpoint: S3Endpoint, bucket: str, *, zero_copy: bool = False) -> Client:
    store = S3Store(
        bucket,
        config={
            "endpoint": endpoint.url,
            "region": endpoint.region,
            "access_key_id": endpoint.access_key,
            "secret_access_key": endpoint.secret_key,
            "virtual_hosted_style_request": False,
        },
        client_options={"allow_http": True},
    )

    def put(key: str, data: bytes) -> None:
        obstore.put(store, key, data, use_multipart=False)

    if zero_copy:  # the buffer obstore returns, without the copy into ``bytes`` S3Store.get makes
        return Client("obstore/buffer", put, lambda key: memoryview(obstore.get(store, key).bytes()))
    return Client("obstore", put, lambda key: bytes(obstore.get(store, key).bytes()))


def boto3_s3(endpoint: S3Endpoint) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint.url,
        aws_access_key_id=endpoint.access_key,
        aws_secret_access_key=endpoint.secret_key,
        region_name=endpoint.region,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )


def boto3_client(endpoint: S3Endpoint, bucket: str) -> Client:
    s3 = boto3_s3(endpoint)

    def put(key: str, data: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=data)

    def get(key: str) -> bytes:
        body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    return Client("boto3", put, get)


@dataclass(frozen=True)
class Workload:
    name: str
    size: int
    count: int
    threads: int


def check(data: bytes | memoryview, expected: bytes) -> None:
    if len(data) != len(expected):
        raise RuntimeError("a get returned the wrong size")


def run(endpoint: S3Endpoint, workloads: list[Workload], repetitions: int) -> None:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3_s3(endpoint).create_bucket(Bucket=bucket)
    clients = [
        obstore_client(endpoint, bucket),
        obstore_client(endpoint, bucket, zero_copy=True),
        boto3_client(endpoint, bucket),
    ]
    print(f"{'workload':<24}{'client':<16}{'op':<5}{'wall s':>8}{'rate':>14}{'client CPU s':>14}")
    for workload in workloads:
        payload = os.urandom(workload.size)
        for client in clients:
            for op, (wall, cpu) in best_of(client, workload, payload, repetitions).items():
                print(
                    f"{workload.name:<24}{client.name:<16}{op:<5}{wall:>8.2f}"
                    f"{rate(workload, wall):>14}{cpu:>14.2f}"
                )


def best_of(
    client: Client, workload: Workload, payload: bytes, repetitions: int
) -> dict[str, tuple[float, float]]:
    """(wall s, CPU s) of the fastest of ``repetitions`` runs per operation (a shared machine)."""
    operations: dict[str, Callable[[str], None]] = {
        "put": lambda key: client.put(key, payload),
        "get": lambda key: check(client.get(key), payload),
    }
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repetitions):
        keys = [f"{client.name}/{workload.name}/{uuid.uuid4().hex}" for _ in range(workload.count)]
        for op, action in operations.items():
            wall, cpu = time.perf_counter(), time.process_time()
            with ThreadPoolExecutor(workload.threads) as pool:
                list(pool.map(action, keys))
            sample = (time.perf_counter() - wall, time.process_time() - cpu)
            if op not in best or sample[0] < best[op][0]:
                best[op] = sample
    return best


def rate(workload: Workload, wall: float) -> str:
    if workload.size >= MIB:
        return f"{workload.size * workload.count / MIB / wall:.0f} MiB/s"
    return f"{workload.count / wall:.0f} ops/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packs", type=int, default=8, help="32 MiB objects per run")
    parser.add_argument("--small", type=int, default=400, help="4 KiB objects per run")
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    workloads = [
        Workload("32MiB x1 thread", 32 * MIB, args.packs, 1),
        Workload("32MiB x4 threads", 32 * MIB, args.packs, 4),
        Workload("4KiB x1 thread", 4096, args.small, 1),
        Workload("4KiB x8 threads", 4096, args.small, 8),
    ]
    with LocalS3Server() as endpoint:
        run(endpoint, workloads, args.repetitions)


if __name__ == "__main__":
    main()
