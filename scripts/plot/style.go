package main

import (
	"image/color"

	"gonum.org/v1/plot/vg/draw"
)

// plotColor and plotShape tell the plot's lines apart in colour and in
// print.
func plotColor(i int) color.Color {
	colors := [...]color.RGBA{{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, {R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, {R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}}
	return colors[i%len(colors)]
}

func plotShape(i int) draw.GlyphDrawer {
	switch i % 3 {
	case 0:
		return draw.TriangleGlyph{}
	case 1:
		return draw.CircleGlyph{}
	default:
		return draw.BoxGlyph{}
	}
}
