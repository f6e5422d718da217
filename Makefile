.PHONY: demo test test-unit bench bench-s3 bench-maintenance bench-parent bench-index bench-scale tools lint chart help
help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

demo:  ## Barge's main job on its embedded defaults: local Kubernetes, coordinator + 2 agents, DataUpload -> DataDownload, bit-exact check
	bash hack/demo.sh

test:  ## everything CI runs: tool builds (cached), lint, mypy, layer contracts, all tests
	bash hack/test.sh

test-unit:  ## the unit tier only (pure, in-process, no servers), on every core: the quick loop while coding
	bash hack/bootstrap-python.sh && .venv/bin/pytest -q -m unit -n auto

bench:  ## Barge vs restic vs kopia on the same data (medians of 3; BENCH_ARGS="--scale 0.25" for a quick look)
	bash hack/bootstrap-python.sh && bash hack/install-bench-deps.sh && .venv/bin/python -m bench.run $(BENCH_ARGS)

bench-s3:  ## obstore vs boto3 as the S3 client, against the real MinIO (puts/gets of packs and small objects)
	bash hack/bootstrap-python.sh && bash hack/install-tools.sh minio && .venv/bin/python -m bench.s3_clients

bench-maintenance:  ## what reclaiming a forgotten snapshot and verifying cost: Barge gc/check vs restic prune/check vs kopia full maintenance/verify, same data (MAINT_ARGS="--scale 1")
	bash hack/bootstrap-python.sh && bash hack/install-bench-deps.sh && .venv/bin/python -m bench.maintenance $(MAINT_ARGS)

bench-parent:  ## what finding a backup's parent costs (LISTs, HEADs, GETs, time) in repositories of 100, 1,000 and 10,000 snapshots, old format vs source entries (~30 s)
	bash hack/bootstrap-python.sh && .venv/bin/python -m bench.parent_lookup $(PARENT_ARGS)

bench-index:  ## what opening a repository of 100,000 and 1,000,000 blobs costs an agent: time to be ready to back up, to the first byte restored, CPU, peak RSS; cold, warm, after one new index object (~2 min; INDEX_ARGS="--sizes 10000000")
	bash hack/bootstrap-python.sh && .venv/bin/python -m bench.index_scale $(INDEX_ARGS)

bench-scale:  ## the coordinator at cluster scale: 200 nodes, 2,000 DataUploads then DataDownloads (SCALE_ARGS="--nodes 10 --uploads 50" for a quick look; --sweep, --failover, --json FILE)
	bash hack/bootstrap-python.sh && bash hack/install-tools.sh etcd kube-apiserver velero && .venv/bin/python -m bench.scale $(SCALE_ARGS)

tools:  ## build the pinned upstream binaries (etcd, kube-apiserver, minio, ...) and Azurite into ~/.cache/barge
	bash hack/install-tools.sh && bash hack/install-azurite.sh

chart:  ## lint charts/barge with the pinned helm and print what it renders (CHART_VALUES=your-values.yaml)
	bash hack/install-tools.sh helm
	"$$(bash hack/install-tools.sh --print-bin-dir)/helm" lint --strict charts/barge $(if $(CHART_VALUES),--values $(CHART_VALUES))
	"$$(bash hack/install-tools.sh --print-bin-dir)/helm" template barge charts/barge --namespace barge $(if $(CHART_VALUES),--values $(CHART_VALUES))

lint:  ## ruff + mypy + import-linter only
	bash hack/bootstrap-python.sh && .venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/lint-imports
