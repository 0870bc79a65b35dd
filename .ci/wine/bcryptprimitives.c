/* ProcessPrng for Wine 8, which ships no bcryptprimitives.dll.
 *
 * Rust's std (since 1.78) imports ProcessPrng from bcryptprimitives.dll for
 * its hash seeds; Windows 10+ has it, Wine gained it only in 9.x. This shim
 * forwards to RtlGenRandom (advapi32's SystemFunction036), which Wine 8 has.
 * Built and installed into the private Wine prefix by .ci/wine/run; never
 * shipped. Documented signature: BOOL ProcessPrng(PBYTE pbData, SIZE_T cbData),
 * which "always returns TRUE". */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x7fffffff ? 0x7fffffff : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
