-- wrk script: durable transfers against a node prepared by `payu-bench http-setup`.
--
--   PAYU_TOKEN=... PAYU_FIRST_ACCOUNT=2 PAYU_ACCOUNTS=100000 \
--     wrk -t2 -c64 -d30s --latency -s bench/http/transfers.lua http://127.0.0.1:18080
--
-- Each request is POST /v1/transfers between two distinct customers picked uniformly from
-- PAYU_FIRST_ACCOUNT .. PAYU_FIRST_ACCOUNT + PAYU_ACCOUNTS - 1, 1 to 100 IDR, with an
-- Idempotency-Key no other request of any run uses (run id, thread, counter), over keep-alive
-- connections. With PAYU_BATCH=N each request is POST /v1/transfers/batch of N such transfers.
--
-- Bodies are generated up front (a pool per thread, reused with fresh keys), so the load
-- generator spends its CPU on HTTP, not on string building: it shares the 2 cores with the node.
--
-- wrk is closed-loop: each connection sends its next request only after the previous answer,
-- so when the node stalls, wrk stops sending and the stall is under-counted (coordinated
-- omission). Its percentiles are those of the requests it managed to send.

local token = assert(os.getenv("PAYU_TOKEN"), "set PAYU_TOKEN (payu token --data-dir <dir>)")
local first = assert(tonumber(os.getenv("PAYU_FIRST_ACCOUNT")), "set PAYU_FIRST_ACCOUNT")
local accounts = assert(tonumber(os.getenv("PAYU_ACCOUNTS")), "set PAYU_ACCOUNTS")
local batch = tonumber(os.getenv("PAYU_BATCH") or "0")
local run_id = os.getenv("PAYU_RUN_ID") or tostring(os.time())

-- Distinct bodies per thread: enough that consecutive requests touch different accounts.
local POOL_SINGLE = 4096
local POOL_BATCH = 8

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_index", #threads)
end

local function transfer_json()
   local from = first + math.random(0, accounts - 1)
   local to = first + math.random(0, accounts - 2)
   if to >= from then
      to = to + 1
   end
   return string.format(
      '{"from_account_id":%d,"to_account_id":%d,"amount":{"value":"%d","currency":"IDR"}}',
      from, to, math.random(1, 100))
end

local function batch_json(size)
   local items = {}
   for i = 1, size do
      items[i] = transfer_json()
   end
   return '{"transfers":[' .. table.concat(items, ",") .. ']}'
end

function init(args)
   math.randomseed(os.time() * 1000 + thread_index)
   counter = 0
   key_prefix = string.format("wrk-%s-%d-", run_id, thread_index)
   headers = {
      ["Authorization"] = "Bearer " .. token,
      ["Content-Type"] = "application/json",
   }
   pool = {}
   if batch > 0 then
      path = "/v1/transfers/batch"
      for i = 1, POOL_BATCH do
         pool[i] = batch_json(batch)
      end
   else
      path = "/v1/transfers"
      for i = 1, POOL_SINGLE do
         pool[i] = transfer_json()
      end
   end
end

function request()
   counter = counter + 1
   headers["Idempotency-Key"] = key_prefix .. counter
   return wrk.format("POST", path, headers, pool[(counter % #pool) + 1])
end

-- One JSON line after wrk's own summary, for the record (times in microseconds).
function done(summary, latency, requests)
   local seconds = summary.duration / 1e6
   local failed = summary.errors.status + summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout
   local answered = summary.requests - failed
   local per_request = batch > 0 and batch or 1
   io.write(string.format(
      '{"scenario":"%s","requests":%d,"non_2xx":%d,"socket_errors":%d,"timeouts":%d,'
         .. '"seconds":%.3f,"requests_per_sec":%.1f,"transfers":%d,"transfers_per_sec":%.1f,'
         .. '"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"batch_size":%d,'
         .. '"latency_sampling":"wrk closed loop: request sent to answer read, per request"}\n',
      batch > 0 and "http_batch_wrk" or "http_single_wrk",
      summary.requests, summary.errors.status,
      summary.errors.connect + summary.errors.read + summary.errors.write,
      summary.errors.timeout, seconds, summary.requests / seconds,
      answered * per_request, answered * per_request / seconds,
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
      per_request))
end
