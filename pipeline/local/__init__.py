"""The local stand-ins for what only Databricks has: a model-serving endpoint on 127.0.0.1
answered by a reference model that measures pixels, and the SQL functions (ai_query,
read_files) the templates in sql/ call. Tests, benchmarks and `vision-batch serve-local`
use them; a run against a real workspace never imports them."""
