/* libmoeclient: the C ABI for talking to moed over its Unix socket, for C and for other
 * languages' foreign-function interfaces. It wraps the C++ API (<moed/client.hpp>); no
 * exception ever leaves these functions.
 *
 * Conventions:
 * - Functions return an int status: MOE_OK (0) or one of the MOE_ERR_* codes below.
 * - After a failure, moe_last_error(handle) is a sentence saying what went wrong and
 *   moe_last_http_status(handle) moed's HTTP status (0 when it sent none). Both describe the
 *   handle's latest call; use one handle per thread when you need them exact (calls on one
 *   handle from several threads are safe, but share these two fields).
 * - Strings handed out through `char**` parameters are NUL-terminated UTF-8, owned by the
 *   caller and freed with moe_free(). On failure they are set to NULL, except that an
 *   MOE_ERR_HTTP failure hands out moed's error body ({"error":{"type","message"}}) when it
 *   sent one.
 * - Each call opens its own connection to moed; opening a handle connects nowhere.
 */
#ifndef MOED_CLIENT_H
#define MOED_CLIENT_H

#include <stddef.h>

#ifndef MOED_CLIENT_API
#if defined(__GNUC__) || defined(__clang__)
#define MOED_CLIENT_API __attribute__((visibility("default")))
#else
#define MOED_CLIENT_API
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes. The values are stable. */
#define MOE_OK 0
#define MOE_ERR_NOT_RUNNING 1      /* nothing listens on the socket (moed is not running) */
#define MOE_ERR_UNREACHABLE 2      /* the socket cannot be used (permission denied, bad path) */
#define MOE_ERR_TIMEOUT 3          /* connecting or waiting for moed timed out */
#define MOE_ERR_CONNECTION 4       /* the connection broke before the answer was complete */
#define MOE_ERR_HTTP 5             /* moed answered with an error status */
#define MOE_ERR_PROTOCOL 6         /* moed's answer was malformed */
#define MOE_ERR_INVALID_ARGUMENT 7 /* a NULL handle or argument, or request_json not a JSON object */
#define MOE_ERR_OUT_OF_MEMORY 8
#define MOE_ERR_INTERNAL 9         /* an unexpected failure inside the library (or a callback's C++ exception) */

typedef struct moe_client moe_client;

/* Opens a handle for the socket at `socket_path`; NULL or "" means $MOED_SOCKET, else the
 * user's own moed ($XDG_RUNTIME_DIR/moed/moed.sock) when it runs, else /run/moed/moed.sock
 * (as moed::default_socket_path). Returns NULL only when out of memory. */
MOED_CLIENT_API moe_client* moe_client_open(const char* socket_path);
/* Frees the handle; NULL is ignored. No call on the handle may be in progress. */
MOED_CLIENT_API void moe_client_close(moe_client* client);

/* Sets the connect timeout and the longest wait for moed's next bytes, in milliseconds
 * (0 keeps the current value; defaults 5000 and 600000). Call it before sharing the handle:
 * no other call on the handle may be in progress. */
MOED_CLIENT_API int moe_set_timeouts(moe_client* client, unsigned connect_timeout_ms, unsigned read_timeout_ms);

/* A completion. `request_json` is an OpenAI-style request object: with "messages" it goes
 * to /v1/chat/completions, otherwise to /v1/completions ("prompt"); "stream" is forced to
 * false. On MOE_OK, *response_json is moed's response body. */
MOED_CLIENT_API int moe_complete(moe_client* client, const char* request_json, char** response_json);

/* Receives each piece of streamed text (`text` is not NUL-terminated; `length` bytes).
 * Return 0 to continue, anything else to stop: the connection is closed, which cancels the
 * request in moed, and moe_stream returns MOE_OK with finish_reason "cancelled". */
typedef int (*moe_stream_callback)(const char* text, size_t length, void* user);

/* The same request streamed ("stream" forced to true). `callback` may be NULL. When
 * `response_json` is not NULL it receives, on MOE_OK, a summary object:
 * {"id","model","text","finish_reason","usage":{"prompt_tokens","completion_tokens","total_tokens"}}. */
MOED_CLIENT_API int moe_stream(moe_client* client, const char* request_json, moe_stream_callback callback,
                               void* user, char** response_json);

/* GET /v1/status, /v1/models: moed's JSON body in *json. */
MOED_CLIENT_API int moe_status_json(moe_client* client, char** status_json);
MOED_CLIENT_API int moe_models_json(moe_client* client, char** models_json);
/* Task profiles. GET /v1/profiles: {"object":"list","data":[...],"problems":[...]}. */
MOED_CLIENT_API int moe_profiles_json(moe_client* client, char** list_json);
/* GET /v1/profiles/NAME: the profile with each layer's top experts. A bad name is
 * MOE_ERR_INVALID_ARGUMENT; an unknown one MOE_ERR_HTTP (404). */
MOED_CLIENT_API int moe_profile_json(moe_client* client, const char* name, char** profile_json);
/* POST /v1/profiles with `request_json` ({"name","prompts":[...],"replace","source"}): moed
 * runs the prompts and stores the profile; *response_json is its summary. */
MOED_CLIENT_API int moe_profile_create(moe_client* client, const char* request_json, char** response_json);
/* DELETE /v1/profiles/NAME; *response_json (may be NULL) is moed's answer. */
MOED_CLIENT_API int moe_profile_delete(moe_client* client, const char* name, char** response_json);
/* GET /healthz: MOE_OK when moed answers that it is healthy. */
MOED_CLIENT_API int moe_health(moe_client* client);

/* The latest call's error message on this handle ("" after a success). Valid until the next
 * call on the handle or its close. NULL handle: a message saying so. */
MOED_CLIENT_API const char* moe_last_error(const moe_client* client);
/* The latest call's HTTP status from moed (0 when it sent none). */
MOED_CLIENT_API int moe_last_http_status(const moe_client* client);

/* A static name for a status code ("ok", "not_running", ...). */
MOED_CLIENT_API const char* moe_strerror(int code);
/* The library's version, "0.2.0". */
MOED_CLIENT_API const char* moe_version(void);

/* Frees a string handed out by this library; NULL is ignored. */
MOED_CLIENT_API void moe_free(char* str);

#ifdef __cplusplus
}
#endif

#endif /* MOED_CLIENT_H */
