// Defines std::ios_base_library_init() (GCC 13's GLIBCXX_3.4.32) as a no-op for libLibTorchSharp.so on
// systems whose libstdc++ is older. GCC 13 headers reference it so that the library initialises the
// standard streams; an older libstdc++ initialises them itself, so there is nothing to do here.
namespace std
{
    void ios_base_library_init() { }
}
