"""The router's protocol conformance corpus (issue 11, item 6).

One module per class (test_framing, test_smuggling, test_connection, test_host, test_codings,
test_upgrade, test_limits, test_timeouts, test_baggage), each a `CASES` table of `harness.Case`
data played by `harness.run_case` against a raw-socket upstream (`rawupstream.RawUpstream`);
test_properties adds a hypothesis property over arbitrary request streams. bench/conformance.py
plays the same tables against HAProxy; tests/protocol/fuzz_router.py seeds atheris with them.
"""
