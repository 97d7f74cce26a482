-- Describe groups of files that belong together (one product, place or subject) with
-- ai_query and MERGE one answer per group into the groups table: one statement, for SQL
-- notebooks and SQL tasks (`vision-batch run --mode sql --group-by ...` runs it too). The
-- same groups table, keys and fingerprints as the UDF path's --group-by, so each path skips
-- the groups the other has done.
--
-- Parameters (named markers; the table through IDENTIFIER; nothing is formatted into text):
--   :groups_table    groups table (<table>_groups)   :input_path   folder or volume to read
--   :group_pattern   regex; capture group 1 of it, found in the path, is the group key
--                    (by folder: '^(.*)/[^/]*$'). Java regex syntax: keep to what Python's
--                    re reads the same way if the UDF path is to find the same groups.
--   :endpoint        serving endpoint name          :prompt       instruction for each group
--   :run_id          id of this run                 :max_tokens   completion limit
--   :temperature     a number, or empty: the endpoint's default
--   :formats         accepted formats, 'JPEG,PNG'   :max_bytes    largest image sent as is
--   :max_file_bytes  files above are never read     :image_tokens estimated tokens per image
--   :max_images      images one request may carry (the model family's limit)
--   :room_bytes      request bytes left for images once the prompt is in (the family's
--                    request limit less the rest of the body)
--   :per_image_bytes what each image part costs besides its base64 bytes
--
-- Numbers may come as strings (notebook widgets), so they are cast where used. No parameter
-- names the prompt id: the `question` CTE computes it from the prompt, the parameters that
-- shape the answer and :group_pattern, as the UDF path's --group-by does.
--
-- ARRAY OF FILES: this template passes ai_query `files => <ARRAY<BINARY>>`, the part's images
-- in path order. The ai_query documentation we could check shows `files => content` with one
-- BINARY only; an array is NOT documented there, and we could not try it on a runtime. One
-- that does not take it should fail the whole statement at analysis, with an argument type
-- error naming `files`, before any request is made or any row written. Then use the UDF
-- path, `vision-batch run --group-by ...` (mode udf): the same groups, prompt and groups
-- table, against any endpoint. (Locally, pipeline/local/sql_functions.py's stand-in takes both.)
--
-- What differs from the UDF path, because SQL can neither decode nor measure a request:
-- - only the groups table is written: members get no rows in the captions table, and a file
--   whose path does not match :group_pattern (group key '') belongs to no group and is left
--   out, recorded nowhere (the UDF path records it as an invalid `no_group` captions row);
-- - a member is sent as it is or not at all (the same refusals as caption_files.sql);
-- - a group is split into parts of at most :max_images images, and of at most as many as
--   fit :room_bytes when every one is as large as the group's largest member: a bound that
--   always fits, where the UDF path packs each part greedily by the actual sizes, so a
--   group of large photos may take more parts here;
-- - ai_query returns no usage, so tokens are estimated (usage_source = 'estimated') for the
--   parts that answered, latency_ms is NULL, and `attempts` counts the parts asked;
-- - Spark's binaryFile scan drops zero-length files and the UDF path adds them back
--   (pipeline/files/source.py). Where read_files drops them too (unchecked on Databricks; the
--   local stand-in lists them), a group holding an empty file has one member fewer here, so
--   another fingerprint: each path then asks that group once more.
MERGE INTO IDENTIFIER(:groups_table) AS t
USING (
  WITH question AS (
    -- The prompt id: a hash of the prompt and of every parameter that shapes the answer, so
    -- the same question has the same id on every path and nobody names it by hand. The
    -- text hashed is a header line, then one line per value, its length in characters, ':'
    -- and the value, or '-' for none (pipeline/endpoint/prompt_ids.py builds the same in
    -- Python; tests/spark/test_prompt_ids.py keeps the two equal).
    SELECT substr(sha2(concat_ws('\n', 'vision-batch prompt id 2', transform(array(
        :prompt,
        CAST(CAST(:max_tokens AS INT) AS STRING),
        CAST(try_cast(try_cast(:temperature AS DOUBLE) AS DECIMAL(20, 6)) AS STRING),
        CAST(NULL AS STRING),  -- no response format: groups are answered in plain text
        CAST(NULL AS STRING),  -- so no caption field
        :group_pattern),
      v -> coalesce(concat(CAST(char_length(v) AS STRING), ':', v), '-'))), 256), 1, 16)
      AS prompt_id
  ),
  listed AS (
    SELECT path, length AS size_bytes, modificationTime AS modified_at, content,
      -- '' when the pattern does not match: the file belongs to no group and is left out.
      regexp_extract(path, :group_pattern, 1) AS group_key
    FROM read_files(:input_path, format => 'binaryFile', recursiveFileLookup => true)
  ),
  fingerprints AS (
    -- Exactly the UDF path's fingerprint (pipeline/runs/plan.py) over every file of the
    -- group, valid or not: a change to any member redoes the group, on either path.
    SELECT group_key,
      sha2(concat_ws('\n', sort_array(collect_list(concat_ws('|', path,
        CAST(size_bytes AS STRING), CAST(CAST(modified_at AS BIGINT) AS STRING))))), 256)
        AS fingerprint
    FROM listed
    WHERE group_key <> ''
    GROUP BY group_key
  ),
  todo AS (
    -- Skip the groups done for this endpoint and prompt whose members are unchanged since.
    SELECT l.*, f.fingerprint
    FROM listed AS l
    JOIN fingerprints AS f ON l.group_key = f.group_key
    LEFT ANTI JOIN (
      SELECT group_key, fingerprint
      FROM IDENTIFIER(:groups_table)
      WHERE endpoint = :endpoint AND prompt_id = (SELECT prompt_id FROM question)
        AND status IN ('ok', 'invalid')
    ) AS d
    ON f.group_key = d.group_key AND f.fingerprint = d.fingerprint
  ),
  -- sniffed and checked are caption_files.sql's, verbatim: the same file is refused alike on
  -- both SQL paths. SQL templates cannot include one another, so the text is repeated and
  -- tests/spark/test_sql_groups.py keeps the two copies equal; edit both or neither.
  -- (content_sha256 is not used here; nothing reads it, so Spark never computes it.)
  sniffed AS (
    -- The format from the leading bytes, never from the name.
    SELECT *,
      CASE
        WHEN size_bytes = 0 OR size_bytes > CAST(:max_file_bytes AS BIGINT) THEN NULL
        WHEN startswith(hex(substring(content, 1, 3)), 'FFD8FF') THEN 'JPEG'
        WHEN startswith(hex(substring(content, 1, 8)), '89504E470D0A1A0A') THEN 'PNG'
        WHEN startswith(hex(substring(content, 1, 4)), '47494638') THEN 'GIF'
        WHEN hex(substring(content, 1, 4)) = '52494646'
             AND hex(substring(content, 9, 4)) = '57454250' THEN 'WEBP'
        WHEN hex(substring(content, 1, 4)) IN ('49492A00', '4D4D002A') THEN 'TIFF'
        WHEN startswith(hex(substring(content, 1, 2)), '424D') THEN 'BMP'
        WHEN hex(substring(content, 5, 4)) = '66747970' THEN 'HEIF'
        WHEN lower(cast(substring(content, 1, 1024) AS STRING)) LIKE '%<svg%' THEN 'SVG'
      END AS format
    FROM todo
  ),
  checked AS (
    SELECT *,
      CASE
        WHEN size_bytes = 0 THEN 'empty_file'
        WHEN size_bytes > CAST(:max_file_bytes AS BIGINT) THEN 'too_large'
        WHEN format IS NULL THEN 'not_an_image'
        WHEN NOT array_contains(split(:formats, ','), format) THEN 'unsupported_format'
        WHEN size_bytes > CAST(:max_bytes AS BIGINT) THEN 'too_large'
      END AS error_class,
      CASE WHEN size_bytes BETWEEN 1 AND CAST(:max_file_bytes AS BIGINT) THEN sha2(content, 256) END
        AS content_sha256
    FROM sniffed
  ),
  parts AS (
    -- The valid members in path order, cut into parts of `per_part` images: at most
    -- :max_images, and no more than fit :room_bytes at the group's largest encoded member
    -- (base64 is 4 bytes per 3). For small images both paths cut alike. sort_array orders
    -- the structs by path, so the images go in path order whatever collect_list saw.
    SELECT group_key, part, CAST(count(*) AS INT) AS images,
      transform(sort_array(collect_list(struct(path, content))), m -> m.content) AS contents
    FROM (
      SELECT group_key, path, content,
        CAST((row_number() OVER (PARTITION BY group_key ORDER BY path) - 1)
          DIV per_part + 1 AS INT) AS part
      FROM (
        SELECT *,
          greatest(1, least(CAST(:max_images AS BIGINT),
            CAST(:room_bytes AS BIGINT) DIV (max(4 * ceil(size_bytes / 3))
              OVER (PARTITION BY group_key) + CAST(:per_image_bytes AS BIGINT)))) AS per_part
        FROM checked
        WHERE error_class IS NULL
      )
    )
    GROUP BY group_key, part
  ),
  answers AS (
    -- One call per part; failOnError => false keeps one failure from failing all. Groups
    -- with no valid member have no part, so they make no call.
    SELECT group_key, part, images,
      ai_query(
        :endpoint,
        :prompt,
        files => contents,
        failOnError => false,
        modelParameters => named_struct(
          'max_tokens', CAST(:max_tokens AS INT), 'temperature', try_cast(:temperature AS DOUBLE))
      ) AS answer
    FROM parts
  ),
  part_outcomes AS (
    SELECT group_key, part, images, answer.result AS result, answer.errorMessage AS failure,
      CASE WHEN answer.result IS NOT NULL AND answer.errorMessage IS NULL THEN 'ok'
           ELSE 'failed' END AS status,
      count(*) OVER (PARTITION BY group_key) AS of_parts
    FROM answers
  ),
  classified AS (
    SELECT *,
      -- caption_files.sql's classification of ai_query's message (a test keeps them equal).
      CASE
        WHEN status = 'ok' THEN NULL
        WHEN failure IS NULL THEN 'bad_response'
        -- vision-batch's own messages (the local ai_query); the SQL path sees no finish_reason
        WHEN failure RLIKE '(?i)cut off at max_tokens' THEN 'cut_off'
        WHEN failure RLIKE '(?i)refused to answer|content_filter' THEN 'refused'
        WHEN failure RLIKE '(?i)breaks the response schema' THEN 'schema_mismatch'
        WHEN failure RLIKE '(?i)\\b429\\b|REQUEST_LIMIT_EXCEEDED|rate limit' THEN 'rate_limited'
        WHEN failure RLIKE '(?i)\\b(401|403)\\b|unauthori[sz]ed|permission' THEN 'auth'
        WHEN failure RLIKE '(?i)\\b408\\b|timed out|timeout|no answer within' THEN 'timeout'
        WHEN failure RLIKE '(?i)\\b4[0-9][0-9]\\b|BAD_REQUEST|INVALID_PARAMETER' THEN 'rejected'
        WHEN failure RLIKE '(?i)not JSON|no choices|empty|structured answer' THEN 'bad_response'
        WHEN failure RLIKE '(?i)connect' THEN 'connection_error'
        ELSE 'server_error'
      END AS error_class
    FROM part_outcomes
  ),
  asked AS (
    -- One row per group that was asked. The answer of a split group is its parts' answers,
    -- labelled and joined in order, as the UDF path writes it.
    SELECT group_key,
      CAST(count(*) AS INT) AS parts,
      count_if(status <> 'ok') AS failed_parts,
      -- The first failed part's class and message, and which part it was when split.
      min_by(error_class, part) FILTER (WHERE status <> 'ok') AS failed_class,
      min_by(concat(coalesce(failure, 'The endpoint answered with no text.'),
        CASE WHEN of_parts > 1 THEN concat(' (part ', CAST(part AS STRING), ' of ',
          CAST(of_parts AS STRING), ')') ELSE '' END), part)
        FILTER (WHERE status <> 'ok') AS failed_message,
      transform(sort_array(collect_list(named_struct('part', part, 'text', result))),
        p -> p.text) AS part_answers,
      array_join(transform(sort_array(collect_list(named_struct('part', part, 'text', concat(
        'Part ', CAST(part AS STRING), ' of ', CAST(of_parts AS STRING), ' (',
        CAST(images AS STRING), ' images): ', result)))), p -> p.text), '\n\n') AS labelled,
      -- Estimated for the parts that answered: the family's image tokens per image and the
      -- prompt at four characters a token per request, the answer at four a token.
      sum(CASE WHEN status = 'ok' THEN CAST(:image_tokens AS INT) * images
        + ceil(char_length(:prompt) / 4) END) AS prompt_tokens,
      sum(CASE WHEN status = 'ok' THEN ceil(char_length(result) / 4) END) AS completion_tokens
    FROM classified
    GROUP BY group_key
  ),
  grouped AS (
    -- Every group to do, asked or not: all its files, and how many of them can be sent.
    SELECT group_key, fingerprint,
      sort_array(collect_list(path)) AS member_paths,
      CAST(count_if(error_class IS NULL) AS INT) AS images
    FROM checked
    GROUP BY group_key, fingerprint
  ),
  outcomes AS (
    SELECT g.*, a.parts, a.failed_class, a.failed_message, a.part_answers, a.labelled,
      a.prompt_tokens, a.completion_tokens,
      CASE
        WHEN g.images = 0 THEN 'invalid'
        WHEN a.failed_parts = 0 THEN 'ok'
        ELSE 'failed'
      END AS status
    FROM grouped AS g
    LEFT JOIN asked AS a ON g.group_key = a.group_key
  )
  SELECT
    group_key,
    :endpoint AS endpoint,
    (SELECT prompt_id FROM question) AS prompt_id,
    fingerprint,
    member_paths,
    images,
    CAST(coalesce(parts, 0) AS INT) AS parts,
    status,
    CASE WHEN status = 'invalid' THEN 'no_valid_image'
         WHEN status = 'failed' THEN failed_class END AS error_class,
    CASE
      WHEN status = 'invalid' THEN
        'No member of the group is an image that can be sent, so no request was made.'
      WHEN status = 'failed' THEN failed_message
    END AS error_message,
    CASE WHEN status = 'ok' THEN
      CASE WHEN parts = 1 THEN part_answers[0] ELSE labelled END
    END AS answer,
    part_answers,
    CAST(NULL AS STRING) AS response_json,
    CAST(prompt_tokens AS INT) AS prompt_tokens,
    CAST(completion_tokens AS INT) AS completion_tokens,
    CAST(prompt_tokens + completion_tokens AS INT) AS total_tokens,
    CASE WHEN prompt_tokens IS NOT NULL THEN 'estimated' END AS usage_source,
    -- ai_query retries inside and does not say how often: one request per part.
    CAST(coalesce(parts, 0) AS INT) AS attempts,
    CAST(NULL AS INT) AS latency_ms,
    :run_id AS run_id,
    current_timestamp() AS processed_at
  FROM outcomes
) AS s
ON t.group_key = s.group_key AND t.endpoint = s.endpoint AND t.prompt_id = s.prompt_id
-- The same WHEN clauses as merge_groups.sql (a test keeps them equal).
WHEN MATCHED AND NOT (
  t.status = 'ok' AND s.status <> 'ok' AND t.fingerprint <=> s.fingerprint
) THEN UPDATE SET *
WHEN NOT MATCHED THEN INSERT *
