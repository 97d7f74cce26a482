"""Ask: the model-serving endpoint and how a run talks to it.

payloads (request bodies and answers) → packing (several images in one request) → pacing
(token and query limits) → client (the async HTTP client) → asking (one image, a pack or a
group, and the rows each answer gives); groups keys the files asked together and makes a
group's row from its parts; auth finds the host and the secret. No Spark here.
"""
