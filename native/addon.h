/*
 * What rampack's Node-API addons share: error handling, argument fetching,
 * and exporting functions. Define ADDON_NAME (for messages) before including.
 */
#ifndef RAMPACK_ADDON_H
#define RAMPACK_ADDON_H

#define NAPI_VERSION 8
#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* Whether a Node-API call failed; then an exception is pending (N-API's own, or ours when it left none). */
static bool failed(napi_env env, napi_status status) {
  if (status == napi_ok) return false;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, NULL, ADDON_NAME " addon: a Node-API call failed");
  return true;
}

/* The call's first `expected` arguments into `args`; false with a TypeError pending when fewer came. */
static bool get_args(napi_env env, napi_callback_info info, size_t expected, napi_value *args) {
  size_t count = expected;
  if (failed(env, napi_get_cb_info(env, info, &count, args, NULL, NULL))) return false;
  if (count < expected) {
    char message[64];
    snprintf(message, sizeof message, "expected %zu arguments, got %zu", expected, count);
    napi_throw_type_error(env, "ERR_MISSING_ARGS", message);
    return false;
  }
  return true;
}

/* The bytes of a Uint8Array (a Buffer is one), else a TypeError naming it. */
static bool bytes_arg(napi_env env, napi_value value, const char *name, uint8_t **data, size_t *length) {
  bool is_typed_array = false;
  if (failed(env, napi_is_typedarray(env, value, &is_typed_array))) return false;
  napi_typedarray_type type = napi_int8_array;
  if (is_typed_array && failed(env, napi_get_typedarray_info(env, value, &type, length, (void **)data, NULL, NULL))) return false;
  if (!is_typed_array || type != napi_uint8_array) {
    char message[96];
    snprintf(message, sizeof message, "%s must be a Uint8Array or Buffer", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", message);
    return false;
  }
  return true;
}

/* A JavaScript string, or NULL with an exception pending. */
static napi_value string_value(napi_env env, const char *text) {
  napi_value result;
  return failed(env, napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &result)) ? NULL : result;
}

#define ADDON_FUNCTION(name, callback) { name, NULL, callback, NULL, NULL, NULL, napi_enumerable, NULL }

/* Puts `functions` on `exports`; returns exports, or NULL with an exception pending. */
static napi_value export_functions(napi_env env, napi_value exports, const napi_property_descriptor *functions, size_t count) {
  return failed(env, napi_define_properties(env, exports, count, functions)) ? NULL : exports;
}

#endif
