def test_s3(bucket, s3_env):
    from eve_trainer.storage import open_store
    st = open_store(f"s3://{bucket}/pfx")
    st.check()
    st.put_bytes("a/b.txt", b"hello")
    assert st.get_bytes("a/b.txt") == b"hello"
    assert st.list("a") == ["a/b.txt"]
    with st.open_read("a/b.txt", start=2) as f:
        assert f.read() == b"llo"
def test_mlflow(mlflow_server):
    import mlflow
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    with mlflow.start_run() as r:
        mlflow.log_metric("x", 1.0)
    assert mlflow.get_run(r.info.run_id).data.metrics["x"] == 1.0
