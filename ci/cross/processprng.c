/* Test-only shim for running deaddrop.exe under Wine 8 (Debian 12), whose bcryptprimitives.dll
 * lacks ProcessPrng, which Rust's standard library imports on Windows since 1.78. Real Windows
 * (10 and later) has it; this file is never part of a release. It forwards to RtlGenRandom
 * (SystemFunction036 in advapi32), the system's CSPRNG. Built by ci/cross/run.sh with mingw-w64. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG n = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, n))
            return FALSE;
        data += n;
        length -= n;
    }
    return TRUE;
}
