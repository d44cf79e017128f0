/*
 * JSON validation with jansson; see json.h.
 */
#include "core/json.h"

#include <jansson.h>
#include <string.h>

#include "core/error.h"

int th__json_check(const char *text, size_t max, int flags, const char *field, th_error *err)
{
    size_t len = strlen(text);
    if (len > max)
        return th__err(err, TH_ETOOBIG, field, "%s is %zu bytes; the limit is %zu", field, len,
                       max);
    json_error_t je;
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!v)
        return th__err(err, TH_EINVAL, field, "%s is not valid JSON: %s at line %d column %d",
                       field, je.text, je.line, je.column);
    int ok = !(flags & TH_JSON_OBJECT) || json_is_object(v);
    json_decref(v);
    if (!ok)
        return th__err(err, TH_EINVAL, field, "%s must be a JSON object", field);
    return 0;
}
