#include "core/internal.h"

int ob_version(void)
{
    return OB_VERSION_NUMBER;
}

const char *ob_version_string(void)
{
    return OB_VERSION_STRING;
}
