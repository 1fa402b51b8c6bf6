-- wrk script: the method and Authorization header given in the environment (BENCH_METHOD,
-- BENCH_AUTHORIZATION; "none" sends no Authorization).
wrk.method = os.getenv("BENCH_METHOD") or "POST"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization and authorization ~= "none" then
  wrk.headers["Authorization"] = authorization
end
