using FastAttention.IO;
using FastAttention.Tests.Support;

namespace FastAttention.Tests;

/// <summary>Nothing the user gave is lost: outputs never clobber or replace inputs, failed runs leave nothing, bad files name themselves.</summary>
public class CliFileSafetyTests : CliTest
{
    [Fact]
    public void Existing_output_is_never_clobbered_without_force()
    {
        string dir = Data.TempDir();
        string outPath = Path.Combine(dir, "precious.npy");
        File.WriteAllText(outPath, "keep me");
        (int code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath);
        Assert.Equal(2, code);
        Assert.Contains("--force", err);
        Assert.Equal("keep me", File.ReadAllText(outPath));

        Assert.Equal(0, Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--force").Code);
        Assert.Equal([8, 42, 15], NumpyFile.ReadFloat32(outPath).Shape);
    }

    [Fact]
    public void Failed_runs_leave_no_output_and_no_temp_files()
    {
        string dir = Data.TempDir();
        string nanQ = Path.Combine(dir, "nan.npy");
        TensorData<float> q = NumpyFile.ReadFloat32(Ocr("q.npy"));
        q.Data[100] = float.NaN;
        NumpyFile.Write(nanQ, q);
        string outPath = Path.Combine(dir, "o.npy");

        (int code, _, string err) = Run("attend", "--q", nanQ, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath);
        Assert.Equal(3, code);
        Assert.Contains($"--q ({nanQ}) contains NaN at [0, 6, 10] (flat index 100)", err); // shape [8, 42, 15]
        Assert.Contains("--allow-nonfinite", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Equal([nanQ], Directory.GetFiles(dir));

        // The approximate methods and inspect need finite inputs whatever the flags say.
        (code, _, err) = Run("attend", "--q", nanQ, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--method", "poly", "--allow-nonfinite");
        Assert.Equal(2, code);
        Assert.Contains("--allow-nonfinite applies to --method exact, not poly", err);
        (code, _, err) = Run("inspect", "--q", nanQ, "--k", Ocr("k.npy"));
        Assert.Equal(3, code);
        Assert.Contains("contains NaN at [0, 6, 10]", err);
        Assert.Equal([nanQ], Directory.GetFiles(dir));

        Assert.Equal(0, Run("attend", "--q", nanQ, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", outPath, "--allow-nonfinite").Code);
        Assert.Contains(NumpyFile.ReadFloat32(outPath).Data, float.IsNaN);
    }

    [Fact]
    public void Shape_mismatch_names_both_shapes()
    {
        string other = Data.Fixture("ocr", "line260", "block1", "k.npy");
        (int code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", other, "--v", Ocr("v.npy"), "--out", Path.Combine(Data.TempDir(), "o.npy"));
        Assert.Equal(3, code);
        Assert.Contains("[8, 260, 15]", err);
        Assert.Contains("[8, 42, 15]", err);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public void Bad_files_exit_3_naming_the_file()
    {
        string dir = Data.TempDir();
        string garbage = Path.Combine(dir, "garbage.npy");
        File.WriteAllText(garbage, "this is not numpy");
        (int code, _, string err) = Run("attend", "--q", garbage, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "o.npy"));
        Assert.Equal(3, code);
        Assert.Contains("garbage.npy", err);

        (code, _, err) = Run("attend", "--q", Path.Combine(dir, "missing.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "o.npy"));
        Assert.Equal(3, code);
        Assert.Contains("missing.npy", err);

        string empty = Path.Combine(dir, "empty.npy");
        NumpyFile.Write(empty, new TensorData<float>([], 0, 15));
        (code, _, err) = Run("attend", "--q", empty, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "o.npy"));
        Assert.Equal(3, code);
        Assert.Contains("empty", err);
    }

    [Fact]
    public void Outputs_whose_extension_names_no_format_they_can_hold_are_refused_before_any_work()
    {
        string dir = Data.TempDir();
        string[] qkv = ["--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy")];
        (int code, _, string err) = Run(["attend", .. qkv, "--out", Path.Combine(dir, "o.txt")]);
        Assert.Equal(2, code);
        Assert.Contains("o.txt: the extension must be one of .npy, .npz, .safetensors", err);

        // The OCR keys have 8 heads: eight index sets of different lengths fit an .npz, not an .npy or a safetensors file.
        (code, _, err) = Run("leverage", "--k", Ocr("k.npy"), "--out", Path.Combine(dir, "u.npy"), "--top", "5");
        Assert.Equal(2, code);
        Assert.Contains("8 heads", err);
        (code, _, err) = Run("leverage", "--k", Ocr("k.npy"), "--out", Path.Combine(dir, "u.safetensors"), "--top", "5");
        Assert.Equal(2, code);
        Assert.Contains("must be one of .npy, .npz", err);
        (code, _, err) = Run("leverage", "--k", Ocr("k.npy"), "--out", Path.Combine(dir, "u.npz"), "--scores", Path.Combine(dir, "s.npz"), "--top", "5");
        Assert.Equal(2, code);
        Assert.Contains("--scores", err);
        Assert.Empty(Directory.GetFiles(dir));
    }

    [Fact]
    public void An_output_naming_an_input_is_refused_even_with_force_and_the_input_is_untouched()
    {
        string dir = Data.TempDir();
        string q = Path.Combine(dir, "q.npy");
        File.Copy(Ocr("q.npy"), q);
        byte[] before = File.ReadAllBytes(q);

        // The same path, written another way.
        string samePath = Path.Combine(dir, ".", "q.npy");
        (int code, _, string err) = Run("attend", "--q", q, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", samePath, "--force");
        Assert.Equal(2, code);
        Assert.Contains("is the file given as --q", err);
        Assert.Equal(before, File.ReadAllBytes(q));

        // The same file through a symbolic link to it, and through a linked folder.
        string link = Path.Combine(dir, "link.npy");
        File.CreateSymbolicLink(link, q);
        Assert.Equal(2, Run("attend", "--q", q, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", link, "--force").Code);
        string folderLink = Path.Combine(dir, "again");
        Directory.CreateSymbolicLink(folderLink, dir);
        (code, _, err) = Run("attend", "--q", q, "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(folderLink, "q.npy"), "--force");
        Assert.Equal(2, code);
        Assert.Contains("is the file given as --q", err);
        Assert.Equal(before, File.ReadAllBytes(q));

        // Every command with inputs and outputs: convert, leverage, tensor.
        Assert.Equal(2, Run("convert", q, "--out", q, "--force").Code);
        Assert.Equal(2, Run("leverage", "--k", q, "--top", "3", "--out", Path.Combine(dir, "ok.npy"), "--scores", q, "--force").Code);
        Assert.Equal(2, Run("tensor", "--q", q, "--k1", q, "--k2", q, "--v1", q, "--v2", q, "--out", link, "--force").Code);
        Assert.Equal(before, File.ReadAllBytes(q));
        Assert.False(File.Exists(Path.Combine(dir, "ok.npy")));
    }

    [Fact]
    public void A_folder_as_output_is_a_one_line_usage_error()
    {
        string dir = Data.TempDir();
        (int code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", dir, "--force");
        Assert.Equal(2, code);
        Assert.Contains("is a folder", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Empty(Directory.GetFileSystemEntries(dir));
    }

    [Fact]
    public void Option_errors_come_before_the_output_already_exists_and_before_any_file_is_read()
    {
        string dir = Data.TempDir();
        string existing = Path.Combine(dir, "o.npy");
        File.WriteAllText(existing, "keep me");
        (int code, _, string err) = Run("attend", "--q", Ocr("q.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", existing, "--method", "poly", "--eps", "5");
        Assert.Equal(2, code);
        Assert.Contains("--eps", err);
        Assert.DoesNotContain("already exists", err);

        // A missing input file (exit 3 when read) is not reached: the bad option is reported first.
        (code, _, err) = Run("attend", "--q", Path.Combine(dir, "missing.npy"), "--k", Ocr("k.npy"), "--v", Ocr("v.npy"), "--out", Path.Combine(dir, "x.npy"), "--kernel", "foo");
        Assert.Equal(2, code);
        Assert.Contains("--kernel 'foo' is not a kernel", err);
        Assert.Equal("keep me", File.ReadAllText(existing));
    }
}
