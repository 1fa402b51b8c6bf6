-- wrk script: POST with the Authorization header given in the environment.
wrk.method = "POST"
wrk.headers["Authorization"] = os.getenv("BENCH_AUTHORIZATION")
