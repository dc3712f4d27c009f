using System.IO.Compression;
using FastAttention.IO;

namespace FastAttention.Training;

/// <summary>
/// MNIST digits as normalised float images and labels, and the fixed train/test split (data/mnist/README.md): image
/// <c>i</c> is a test image when <c>i mod 5 == 4</c>, a training image otherwise.
/// </summary>
public sealed class MnistData
{
    /// <summary>The side of an image in pixels.</summary>
    public const int Side = 28;

    /// <summary>Pixels per image.</summary>
    public const int Pixels = Side * Side;

    /// <summary>The number of classes.</summary>
    public const int Classes = 10;

    /// <summary>Pixel normalisation: <c>(pixel / 255 - Mean) / Std</c>, the usual MNIST statistics.</summary>
    public const float Mean = 0.1307f;

    /// <summary>See <see cref="Mean"/>.</summary>
    public const float Std = 0.3081f;

    private MnistData(float[] images, long[] labels, string source)
    {
        Images = images;
        Labels = labels;
        Source = source;
    }

    /// <summary>The normalised images, <c>[Count, 28, 28]</c> in C order.</summary>
    public float[] Images { get; }

    /// <summary>The digit of each image.</summary>
    public long[] Labels { get; }

    /// <summary>The number of images.</summary>
    public int Count => Labels.Length;

    /// <summary>Where the data came from (a path, or the embedded copy).</summary>
    public string Source { get; }

    /// <summary>
    /// Identifies the data a run trained on (image count and a SHA-256 prefix of the normalised pixels and labels), so a
    /// checkpoint resumes only on the same data.
    /// </summary>
    public string Fingerprint => fingerprint ??= ComputeFingerprint();

    private string? fingerprint;

    private string ComputeFingerprint()
    {
        using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        hash.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(Images.AsSpan()));
        hash.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(Labels.AsSpan()));
        return $"{Count} images, sha256 {Convert.ToHexStringLower(hash.GetHashAndReset())[..16]}";
    }

    /// <summary>The 10,000 digits embedded in this assembly (data/mnist/mnist.npz).</summary>
    /// <returns>The data.</returns>
    public static MnistData LoadEmbedded()
    {
        using Stream stream = typeof(MnistData).Assembly.GetManifestResourceStream("mnist.npz")
            ?? throw new InvalidOperationException("the embedded mnist.npz is missing from FastAttention.Training");
        return Read(stream, "embedded mnist.npz");
    }

    /// <summary>
    /// Reads an <c>.npz</c> with <c>images</c> (<c>[n, 28, 28]</c>, pixel values 0..255, any numeric type) and <c>labels</c>
    /// (<c>[n]</c>, 0..9).
    /// </summary>
    /// <param name="path">The archive.</param>
    /// <returns>The data.</returns>
    /// <exception cref="InvalidDataException">The file is missing, not an archive, or lacks or mis-shapes an array (the message names the file).</exception>
    public static MnistData Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path))
        {
            throw new InvalidDataException($"data {path}: no such file");
        }

        using var stream = File.OpenRead(path);
        return Read(stream, path);
    }

    /// <summary>The indices of the training images (<c>i mod 5 != 4</c>), ascending.</summary>
    /// <returns>The indices.</returns>
    public int[] TrainIndices() => [.. Enumerable.Range(0, Count).Where(i => i % 5 != 4)];

    /// <summary>The indices of the test images (<c>i mod 5 == 4</c>), ascending.</summary>
    /// <returns>The indices.</returns>
    public int[] TestIndices() => [.. Enumerable.Range(0, Count).Where(i => i % 5 == 4)];

    private static MnistData Read(Stream stream, string source)
    {
        TensorData<float>? images = null, labels = null;
        try
        {
            using var zip = new ZipArchive(stream, ZipArchiveMode.Read);
            foreach (var entry in zip.Entries)
            {
                if (entry.FullName is "images.npy" or "labels.npy")
                {
                    using var entryStream = entry.Open();
                    var array = NumpyFile.ReadFloat32(entryStream, $"{source}:{entry.FullName}");
                    (entry.FullName == "images.npy" ? ref images : ref labels) = array;
                }
            }
        }
        catch (Exception e) when (e is InvalidDataException or TensorFileException or IOException)
        {
            throw new InvalidDataException($"data {source}: {e.Message}", e);
        }

        if (images is null || labels is null)
        {
            throw new InvalidDataException($"data {source}: needs arrays 'images' and 'labels' (an .npz as numpy.savez writes)");
        }

        if (images.Rank != 3 || images.Shape[1] != Side || images.Shape[2] != Side)
        {
            throw new InvalidDataException($"data {source}: images has shape {images.ShapeText}, expected [n, {Side}, {Side}]");
        }

        if (labels.Rank != 1 || labels.Shape[0] != images.Shape[0] || labels.Shape[0] == 0)
        {
            throw new InvalidDataException($"data {source}: labels has shape {labels.ShapeText}, expected [{images.Shape[0]}] (one per image, at least one)");
        }

        var pixels = images.Data;
        for (int i = 0; i < pixels.Length; i++)
        {
            float p = pixels[i];
            if (!(p >= 0 && p <= 255))
            {
                throw new InvalidDataException($"data {source}: pixel {i} is {p}, outside 0..255");
            }

            pixels[i] = (p / 255f - Mean) / Std;
        }

        var digits = new long[labels.Shape[0]];
        for (int i = 0; i < digits.Length; i++)
        {
            float label = labels.Data[i];
            if (label is < 0 or > Classes - 1 || label != MathF.Floor(label))
            {
                throw new InvalidDataException($"data {source}: label {i} is {label}, not a digit 0..9");
            }

            digits[i] = (long)label;
        }

        return new MnistData(pixels, digits, source);
    }
}
