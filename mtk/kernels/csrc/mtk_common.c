/* Array forms of the half conversions in mtk_common.h, exported so that tests can check them against numpy. */
#include "mtk_common.h"

MTK_EXPORT void mtk_f32_to_f16_array(const float *x, uint16_t *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = mtk_f32_to_f16(x[i]);
}

MTK_EXPORT void mtk_f16_to_f32_array(const uint16_t *h, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = mtk_f16_to_f32(h[i]);
}
