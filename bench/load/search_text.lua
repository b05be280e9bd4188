-- wrk script for bench/bench_batching.py --load wrk: POST /v1/search/text with random 3-word
-- queries (the words of bench_batching.WORDS), then one JSON line of results on stdout.
local words = {"red", "blue", "dog", "cat", "street", "kitchen", "beach", "mountain", "car", "child", "pizza", "train"}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(seed or 1)
end

local function word()
  return words[math.random(#words)]
end

function request()
  local body = string.format('{"text": "%s %s %s", "k": 10}', word(), word(), word())
  return wrk.format("POST", "/v1/search/text", {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "non_2xx": %d, "socket_errors": %d, "p50_ms": %.1f, "p99_ms": %.1f}\n',
    summary.requests, summary.duration / 1e6, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
