"""Test support, one importable package (pytest puts tests/ on sys.path: [tool.pytest.ini_options]
pythonpath; benchmarks get PYTHONPATH=tests from `make bench`).

    support.services          SeaweedFS (real S3) and an MLflow server on loopback; free ports
    support.tcp_proxy         a TCP forwarder that can be cut (outages)
    support.schema_check      CRD schemas: structural checks and validation
    support.kube_emulator     kmock's Kubernetes API emulator, with watches and pod logs
    support.cluster_emulator  the training-operator (PyTorchJob) and a kubelet running real processes
    support.trainjob_emulator Kubeflow Trainer v2 (TrainJob -> JobSet -> pods) on the same kubelet
    support.operator_harness  the real operator (kopf) against the emulator; fixtures and waits
    support.pod_security      the restricted Pod Security Standard as a checker
    support.data_helpers      data-pipeline test helpers
    support.eve_model_testutils  tiny eve_model configs, batches and images
    support.eve_trainer_harness  trainer ranks as local processes
    support.deploy_support    helm, kubectl and the chart renderings
"""
