-- wrk script for the h1-echo scenario: every request POSTs 10 KiB to the path in the URL.
-- wrk adds the Content-Length header itself when a body is set.
wrk.method = "POST"
wrk.body = string.rep("x", 10240)
wrk.headers["Content-Type"] = "application/octet-stream"
