namespace FastAttention.Cli;

/// <summary>Q, K, V arrays of rank 2, 3 or 4 checked against each other and turned into an <see cref="AttentionShape"/>.</summary>
internal static class AttentionInputs
{
    /// <summary>Reads [n, d], [h, n, d] or [b, h, n, d] as [b, h, n, d].</summary>
    public static int[] AsFourD(TensorData tensor, string option) => AsFourD(tensor.Shape, option);

    /// <summary>Reads a shape [n, d], [h, n, d] or [b, h, n, d] as [b, h, n, d].</summary>
    public static int[] AsFourD(IReadOnlyList<int> shape, string option)
    {
        string text = TensorData.FormatShape(shape);
        if (shape.Count is < 2 or > 4)
        {
            throw new BadInputException($"--{option} has shape {text}; expected [n, d], [heads, n, d] or [batch, heads, n, d]");
        }

        if (shape.Any(length => length == 0))
        {
            throw new BadInputException($"--{option} is empty (shape {text})");
        }

        int[] dims = [1, 1, 1, 1];
        for (int a = 0; a < shape.Count; a++)
        {
            dims[4 - shape.Count + a] = shape[a];
        }

        return dims;
    }

    public static AttentionShape Shape(TensorData q, TensorData k, TensorData v) => Shape(q.Shape, k.Shape, v.Shape);

    /// <summary>The attention shape of query, key and value shapes (keys and values read into a storage type bring only their shapes).</summary>
    public static AttentionShape Shape(IReadOnlyList<int> qShape, IReadOnlyList<int> kShape, IReadOnlyList<int> vShape)
    {
        int[] qs = AsFourD(qShape, "q"), ks = AsFourD(kShape, "k"), vs = AsFourD(vShape, "v");
        string q = TensorData.FormatShape(qShape), k = TensorData.FormatShape(kShape), v = TensorData.FormatShape(vShape);
        if (qShape.Count != kShape.Count || qShape.Count != vShape.Count)
        {
            throw new BadInputException($"--q, --k and --v must have the same rank; got {q}, {k} and {v}");
        }

        if (ks[3] != qs[3])
        {
            throw new BadInputException($"head dimension differs: --q has shape {q} but --k has shape {k} (the last dimensions must match)");
        }

        if (vs[2] != ks[2] || vs[1] != ks[1] || vs[0] != ks[0])
        {
            throw new BadInputException($"--k has shape {k} but --v has shape {v}; they must agree in every dimension but the last");
        }

        if (ks[0] != qs[0])
        {
            throw new BadInputException($"batch size differs: --q has shape {q} but --k has shape {k}");
        }

        if (qs[1] % ks[1] != 0)
        {
            throw new BadInputException($"--k has {ks[1]} heads, which does not divide the {qs[1]} query heads of --q {q} (grouped-query attention needs a divisor)");
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
