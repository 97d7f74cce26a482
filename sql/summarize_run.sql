-- One run's totals from the rows it wrote: one row per (status, error_class), then a grand
-- total row (is_total = 1) carrying the latency percentiles of the rows that made requests.
-- Cost counts rows with attempts > 0 only: a reused answer repeats its usage but paid nothing.
-- A request carrying several images (packed or grouped) is shared by them: request_share
-- sums to the requests sent (rows from before that column count their attempts).
SELECT
  grouping(status) AS is_total,
  status,
  error_class,
  count(*) AS files,
  coalesce(round(sum(coalesce(request_share, attempts))), 0) AS requests,
  coalesce(round(sum(CASE WHEN attempts > 0
    THEN coalesce(request_share, attempts) * (attempts - 1) / attempts END)), 0) AS retries,
  coalesce(sum(CASE WHEN attempts > 0 THEN prompt_tokens END), 0) AS prompt_tokens,
  coalesce(sum(CASE WHEN attempts > 0 THEN completion_tokens END), 0) AS completion_tokens,
  coalesce(sum(CASE WHEN attempts > 0 THEN total_tokens END), 0) AS total_tokens,
  percentile_approx(CASE WHEN attempts > 0 THEN latency_ms END, 0.5) AS latency_p50_ms,
  percentile_approx(CASE WHEN attempts > 0 THEN latency_ms END, 0.95) AS latency_p95_ms
FROM IDENTIFIER(:table)
WHERE run_id = :run_id
GROUP BY GROUPING SETS ((status, error_class), ())
