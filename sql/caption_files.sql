-- Caption the files under :input_path with ai_query and MERGE them into the captions table:
-- one statement, for SQL notebooks and SQL tasks (`vision-batch run --mode sql` runs it too).
--
-- Parameters (named markers; the table through IDENTIFIER; nothing is formatted into text):
--   :table           captions table                 :input_path   folder or volume to read
--   :endpoint        serving endpoint name          :prompt       instruction for every image
--   :run_id          id of this run                 :max_tokens   completion limit
--   :temperature     a number, or empty: the endpoint's default
--   :response_format JSON response format, or empty :caption_field field holding the caption
--   :formats         accepted formats, 'JPEG,PNG'   :max_bytes    largest image sent as is
--   :max_file_bytes  files above are never read     :image_tokens estimated tokens per image
--
-- Numbers may come as strings (notebook widgets), so they are cast where used. No parameter
-- names the prompt id: the `question` CTE computes it from the prompt and the parameters
-- that shape the answer, as every other path does, so a changed prompt is a new question.
--
-- SQL cannot decode or resize images: a file is sent as it is or not at all. Files the model
-- would refuse (empty, too large, not an image by their leading bytes, a format not in
-- :formats) become `invalid` rows before any call. ai_query returns no usage, so tokens are
-- estimated (:image_tokens from the model family's formula at its recommended size, text at
-- four characters a token) and marked usage_source = 'estimated'.
MERGE INTO IDENTIFIER(:table) AS t
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
        -- Canonical: keys sorted, no spaces, so the same format written otherwise is the same.
        to_json(parse_json(nullif(:response_format, ''))),
        CASE WHEN nullif(:response_format, '') IS NOT NULL THEN :caption_field END,
        CAST(NULL AS STRING)),  -- no group rule
      v -> coalesce(concat(CAST(char_length(v) AS STRING), ':', v), '-'))), 256), 1, 16)
      AS prompt_id
  ),
  listed AS (
    SELECT path, length AS size_bytes, modificationTime AS modified_at, content
    FROM read_files(:input_path, format => 'binaryFile', recursiveFileLookup => true)
  ),
  todo AS (
    -- Skip what is done for this endpoint and prompt and unchanged since.
    SELECT l.*
    FROM listed AS l
    LEFT ANTI JOIN (
      SELECT path, size_bytes, modified_at
      FROM IDENTIFIER(:table)
      WHERE endpoint = :endpoint AND prompt_id = (SELECT prompt_id FROM question)
        AND status IN ('ok', 'invalid')
    ) AS d
    ON l.path = d.path AND l.size_bytes = d.size_bytes AND l.modified_at = d.modified_at
  ),
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
  answers AS (
    -- One call per distinct content; failOnError => false keeps one failure from failing all.
    SELECT content_sha256,
      ai_query(
        :endpoint,
        :prompt,
        files => content,
        failOnError => false,
        modelParameters => named_struct(
          'max_tokens', CAST(:max_tokens AS INT), 'temperature', try_cast(:temperature AS DOUBLE)),
        responseFormat => nullif(:response_format, '')
      ) AS answer
    FROM (
      SELECT content_sha256, first(content) AS content
      FROM checked
      WHERE error_class IS NULL
      GROUP BY content_sha256
    )
  ),
  outcomes AS (
    SELECT c.*, a.answer.result AS result, a.answer.errorMessage AS failure,
      -- Same bytes under several paths: the first path asked, the others reuse its answer.
      min(CASE WHEN c.error_class IS NULL THEN c.path END)
        OVER (PARTITION BY c.content_sha256) AS answer_path,
      CASE
        WHEN c.error_class IS NOT NULL THEN 'invalid'
        WHEN a.answer.result IS NOT NULL AND a.answer.errorMessage IS NULL THEN 'ok'
        ELSE 'failed'
      END AS status
    FROM checked AS c
    LEFT JOIN answers AS a ON c.error_class IS NULL AND c.content_sha256 = a.content_sha256
  )
  SELECT
    path,
    content_sha256,
    size_bytes,
    modified_at,
    format,
    CAST(NULL AS INT) AS width,
    CAST(NULL AS INT) AS height,
    CAST(NULL AS INT) AS sent_width,
    CAST(NULL AS INT) AS sent_height,
    CAST(CASE WHEN status <> 'invalid' THEN size_bytes END AS INT) AS sent_bytes,
    :endpoint AS endpoint,
    (SELECT prompt_id FROM question) AS prompt_id,
    status,
    CASE
      WHEN status = 'invalid' THEN error_class
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
    END AS error_class,
    CASE
      WHEN status = 'invalid' THEN
        CASE error_class
          WHEN 'empty_file' THEN 'The file is empty.'
          WHEN 'not_an_image' THEN 'The bytes are not an image in any known format.'
          WHEN 'unsupported_format' THEN concat(format, ' images are not accepted by this model.')
          ELSE concat('The file is ', size_bytes, ' bytes, over the ',
                      CASE WHEN size_bytes > CAST(:max_file_bytes AS BIGINT) THEN :max_file_bytes
                           ELSE :max_bytes END, ' bytes that can be sent as is.')
        END
      WHEN status = 'failed' THEN coalesce(failure, 'The endpoint answered with no text.')
    END AS error_message,
    CASE
      WHEN status <> 'ok' THEN NULL
      WHEN nullif(:response_format, '') IS NULL THEN result
      ELSE get_json_object(result, concat('$.', :caption_field))
    END AS caption,
    CASE WHEN status = 'ok' AND nullif(:response_format, '') IS NOT NULL THEN result END
      AS response_json,
    CAST(CASE WHEN status = 'ok'
      THEN CAST(:image_tokens AS INT) + ceil(char_length(:prompt) / 4) END AS INT) AS prompt_tokens,
    CAST(CASE WHEN status = 'ok' THEN ceil(char_length(result) / 4) END AS INT)
      AS completion_tokens,
    CAST(CASE WHEN status = 'ok' THEN CAST(:image_tokens AS INT) + ceil(char_length(:prompt) / 4)
      + ceil(char_length(result) / 4) END AS INT) AS total_tokens,
    CASE WHEN status = 'ok' THEN 'estimated' END AS usage_source,
    CAST(CASE WHEN status = 'invalid' THEN 0 ELSE CAST(:image_tokens AS INT) END AS INT)
      AS estimated_image_tokens,
    -- ai_query retries inside and does not say how often: one request per distinct content.
    CAST(CASE WHEN status <> 'invalid' AND path = answer_path THEN 1 ELSE 0 END AS INT)
      AS attempts,
    CAST(NULL AS INT) AS latency_ms,
    :run_id AS run_id,
    current_timestamp() AS processed_at,
    CASE WHEN status <> 'invalid' AND path <> answer_path THEN answer_path END AS reused_from,
    CAST(CASE WHEN status <> 'invalid' AND path = answer_path THEN 1 ELSE 0 END AS DOUBLE)
      AS request_share,
    CAST(NULL AS STRING) AS group_key,
    -- ai_query returns the answer's text only, not how it ended.
    CAST(NULL AS STRING) AS finish_reason
  FROM outcomes
) AS s
ON t.path = s.path AND t.endpoint = s.endpoint AND t.prompt_id = s.prompt_id
-- The same WHEN clauses as merge_captions.sql (a test keeps them equal).
WHEN MATCHED AND NOT (
  t.status = 'ok' AND s.status <> 'ok' AND t.content_sha256 <=> s.content_sha256
) THEN UPDATE SET *
WHEN NOT MATCHED THEN INSERT *
