namespace FastAttention.Cli;

/// <summary>Q, K, V arrays of rank 2, 3 or 4 checked against each other and turned into an <see cref="AttentionShape"/>.</summary>
internal static class AttentionInputs
{
    /// <summary>Reads [n, d], [h, n, d] or [b, h, n, d] as [b, h, n, d].</summary>
    public static int[] AsFourD(TensorData tensor, string option)
    {
        if (tensor.Rank is < 2 or > 4)
        {
            throw new BadInputException($"--{option} has shape {tensor.ShapeText}; expected [n, d], [heads, n, d] or [batch, heads, n, d]");
        }

        if (tensor.ElementCount == 0)
        {
            throw new BadInputException($"--{option} is empty (shape {tensor.ShapeText})");
        }

        int[] dims = [1, 1, 1, 1];
        for (int a = 0; a < tensor.Rank; a++)
        {
            dims[4 - tensor.Rank + a] = tensor.Shape[a];
        }

        return dims;
    }

    public static AttentionShape Shape(TensorData q, TensorData k, TensorData v)
    {
        int[] qs = AsFourD(q, "q"), ks = AsFourD(k, "k"), vs = AsFourD(v, "v");
        if (q.Rank != k.Rank || q.Rank != v.Rank)
        {
            throw new BadInputException($"--q, --k and --v must have the same rank; got {q.ShapeText}, {k.ShapeText} and {v.ShapeText}");
        }

        if (ks[3] != qs[3])
        {
            throw new BadInputException($"head dimension differs: --q has shape {q.ShapeText} but --k has shape {k.ShapeText} (the last dimensions must match)");
        }

        if (vs[2] != ks[2] || vs[1] != ks[1] || vs[0] != ks[0])
        {
            throw new BadInputException($"--k has shape {k.ShapeText} but --v has shape {v.ShapeText}; they must agree in every dimension but the last");
        }

        if (ks[0] != qs[0])
        {
            throw new BadInputException($"batch size differs: --q has shape {q.ShapeText} but --k has shape {k.ShapeText}");
        }

        if (qs[1] % ks[1] != 0)
        {
            throw new BadInputException($"--k has {ks[1]} heads, which does not divide the {qs[1]} query heads of --q {q.ShapeText} (grouped-query attention needs a divisor)");
        }

        return new AttentionShape(qs[0], qs[1], qs[2], ks[2], qs[3], vs[3], ks[1]);
    }

    /// <summary>The output shape: the query's shape with the value dimension last.</summary>
    public static int[] OutputShape(TensorData q, AttentionShape shape)
    {
        int[] dims = [.. q.Shape];
        dims[^1] = shape.ValueDim;
        return dims;
    }
}
